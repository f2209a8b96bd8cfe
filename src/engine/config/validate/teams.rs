//! `[[teams]]`: ids (the projects' rule, unique among teams) and each team's budget windows
//! (`budget = {…}` and `budgets = […]`, at most one per period), which every project naming
//! the team shares.

use toml::Spanned;

use super::projects::id_rule;
use super::{Names, Validator};
use crate::engine::config::file::FileTeam;
use crate::engine::config::Team;

impl Validator<'_> {
    /// Every team, in file order, so a team's position is its `Config::teams` index.
    pub(super) fn teams(&mut self, list: &[Spanned<FileTeam>]) -> Vec<Team> {
        let mut ids = Names::new("teams", "id", "team id", id_rule);
        let mut out = Vec::with_capacity(list.len());
        for (i, t) in list.iter().enumerate() {
            let t = t.get_ref();
            self.name(&mut ids, i, &t.id);
            let budgets = self.windows(&format!("teams[{i}]"), t.budget.as_ref(), &t.budgets);
            out.push(Team {
                id: t.id.get_ref().clone(),
                budgets,
            });
        }
        out
    }
}
