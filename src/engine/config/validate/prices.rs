//! `[prices."MODEL"]` and the files named in `price_files`: USD per million tokens, normalised
//! to the price table's integer units at load.

use std::collections::BTreeMap;

use toml::Spanned;

use super::Validator;
use crate::engine::config::file::{FilePrice, FilePrices};
use crate::engine::config::FileReader;
use crate::engine::pricing::{per_mtok_to_pico, Price};

/// A `[prices]` table as the schema reads it.
type PriceMap = BTreeMap<Spanned<String>, Spanned<FilePrice>>;

const MAX_OUTPUT_TOKENS: i64 = 100_000_000;

/// Lay `later` over `prices`: a model both name takes `later`'s price.
pub(super) fn merge(prices: &mut Vec<(String, Price)>, later: Vec<(String, Price)>) {
    for (k, v) in later {
        prices.retain(|(o, _)| *o != k);
        prices.push((k, v));
    }
}

impl Validator<'_> {
    /// Prices from every file in `price_files`, in order (a later file wins on a shared name);
    /// their problems are reported against their own file and line.
    pub(super) fn price_files(
        &mut self,
        files: &[Spanned<String>],
        read: FileReader,
    ) -> Vec<(String, Price)> {
        let mut out: Vec<(String, Price)> = Vec::new();
        for (i, f) in files.iter().enumerate() {
            let (shown, text) = match read(f.get_ref()) {
                Ok(x) => x,
                Err(m) => {
                    self.err(Some(f.span()), format!("price_files[{i}]"), m);
                    continue;
                }
            };
            let mut sub = Validator::new(&text);
            match toml::from_str::<FilePrices>(&text) {
                Ok(p) => merge(&mut out, sub.prices(&p.prices)),
                Err(e) => {
                    let span = e.span();
                    sub.err(span, "", e.message().trim());
                }
            }
            for mut e in sub.errors {
                e.file = Some(shown.clone());
                self.errors.push(e);
            }
        }
        out
    }

    /// The valid prices of one `[prices]` table, in key order.
    pub(super) fn prices(&mut self, map: &PriceMap) -> Vec<(String, Price)> {
        let mut out = Vec::new();
        for (model, p) in map {
            let at = format!("prices.{:?}", model.get_ref());
            let span = p.span();
            let p = p.get_ref();
            let mut pico = |v: f64, what: &str| -> Option<u64> {
                let r = per_mtok_to_pico(v);
                if r.is_none() {
                    self.err(
                        Some(span.clone()),
                        format!("{at}.{what}"),
                        format!("must be a price in USD per million tokens between 0 and 1000000, got {v}"),
                    );
                }
                r
            };
            let input = pico(p.input, "input");
            let output = pico(p.output, "output");
            let cache_read = p.cache_read.map(|v| pico(v, "cache_read"));
            let cache_write = p.cache_write.map(|v| pico(v, "cache_write"));
            let max_out = match p.max_output_tokens {
                Some(n) if n <= 0 || n > MAX_OUTPUT_TOKENS => {
                    self.err(
                        Some(span.clone()),
                        format!("{at}.max_output_tokens"),
                        format!("must be between 1 and {MAX_OUTPUT_TOKENS}, got {n}"),
                    );
                    None
                }
                Some(n) => Some(Some(n as u64)),
                None => Some(None),
            };
            if model.get_ref().is_empty() {
                self.err(Some(model.span()), "prices", "a price needs a model name");
            }
            if let (Some(input), Some(output), Some(max_output_tokens)) = (input, output, max_out) {
                // Unpriced cache tokens cost what prompt tokens cost.
                let cache_read = cache_read.unwrap_or(Some(input));
                let cache_write = cache_write.unwrap_or(Some(input));
                if let (Some(cache_read), Some(cache_write)) = (cache_read, cache_write) {
                    out.push((
                        model.get_ref().clone(),
                        Price {
                            input,
                            output,
                            cache_read,
                            cache_write,
                            max_output_tokens,
                        },
                    ));
                }
            }
        }
        out
    }
}
