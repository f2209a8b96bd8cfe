//! `[server]`: listeners, the admin token, body cap, threads, grace period, circuit breaker.

use super::{Env, Validator};
use crate::engine::circuit::CircuitParams;
use crate::engine::config::file::FileServer;
use crate::engine::config::ServerConfig;
use crate::engine::provider::Secret;

impl Validator<'_> {
    pub(super) fn server(&mut self, s: &FileServer, env: Env) -> Option<ServerConfig> {
        let d = ServerConfig::default();
        let listen = match &s.listen {
            Some(l) => self.addr(l, "server.listen"),
            None => Some(d.listen),
        };
        let admin_listen = match &s.admin_listen {
            Some(l) => self.addr(l, "server.admin_listen").map(Some),
            None => Some(d.admin_listen),
        };
        let (admin_token, admin_token_env) = match &s.admin_token_env {
            Some(var) => {
                let name = var.get_ref().clone();
                if name.is_empty() {
                    self.err(
                        Some(var.span()),
                        "server.admin_token_env",
                        "must name an environment variable",
                    );
                }
                // Unset is allowed: the admin API is then disabled, as the SPEC says.
                let token = env(&name).filter(|t| !t.is_empty()).map(Secret::new);
                (token, Some(name))
            }
            None => (d.admin_token, d.admin_token_env),
        };
        let max_body_bytes = match &s.max_body_bytes {
            Some(v) => self
                .positive(v, "server.max_body_bytes", 1 << 30)
                .map(|n| n as usize),
            None => Some(d.max_body_bytes),
        };
        let threads = match &s.threads {
            Some(v) => self.positive(v, "server.threads", 1024).map(|n| n as usize),
            None => Some(d.threads),
        };
        let grace_period_s = match &s.grace_period_s {
            Some(v) if *v.get_ref() == 0 => Some(0),
            Some(v) => self.positive(v, "server.grace_period_s", 86_400),
            None => Some(d.grace_period_s),
        };
        let circuit_failures = match &s.circuit_failures {
            Some(v) => self
                .positive(v, "server.circuit_failures", 1000)
                .map(|n| n as u32),
            None => Some(d.circuit.failures),
        };
        let circuit_cooldown_ms = match &s.circuit_cooldown_ms {
            Some(v) => self.positive(v, "server.circuit_cooldown_ms", 3_600_000),
            None => Some(d.circuit.cooldown_ms),
        };
        Some(ServerConfig {
            listen: listen?,
            admin_listen: admin_listen?,
            admin_token,
            admin_token_env,
            max_body_bytes: max_body_bytes?,
            threads: threads?,
            grace_period_s: grace_period_s?,
            upgrade_sock: s.upgrade_sock.clone().unwrap_or(d.upgrade_sock),
            pid_file: s.pid_file.clone().unwrap_or(d.pid_file),
            circuit: CircuitParams {
                failures: circuit_failures?,
                cooldown_ms: circuit_cooldown_ms?,
            },
        })
    }
}
