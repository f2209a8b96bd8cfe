//! `[server]`: listeners, the admin token, body cap, threads, grace period, circuit breaker,
//! the gateway listener's TLS files.

use std::path::PathBuf;

use toml::Spanned;

use super::{Env, Validator};
use crate::engine::circuit::CircuitParams;
use crate::engine::config::file::FileServer;
use crate::engine::config::{ServerConfig, TlsCheck, TlsFiles, TlsPart};
use crate::engine::provider::Secret;

impl Validator<'_> {
    /// A token named by an environment variable: unset (or empty) is allowed and means "no
    /// such token" (the admin API is then disabled, as the SPEC says); an empty name is not.
    fn token(
        &mut self,
        var: &Option<Spanned<String>>,
        what: &str,
        env: Env,
    ) -> (Option<Secret>, Option<String>) {
        let Some(var) = var else {
            return (None, None);
        };
        let name = var.get_ref().clone();
        if name.is_empty() {
            self.err(Some(var.span()), what, "must name an environment variable");
        }
        let token = env(&name).filter(|t| !t.is_empty()).map(Secret::new);
        (token, Some(name))
    }

    pub(super) fn server(
        &mut self,
        s: &FileServer,
        env: Env,
        tls: TlsCheck,
    ) -> Option<ServerConfig> {
        let d = ServerConfig::default();
        let listen = match &s.listen {
            Some(l) => self.addr(l, "server.listen"),
            None => Some(d.listen),
        };
        let admin_listen = match &s.admin_listen {
            Some(l) => self.addr(l, "server.admin_listen").map(Some),
            None => Some(d.admin_listen),
        };
        let (admin_token, admin_token_env) =
            self.token(&s.admin_token_env, "server.admin_token_env", env);
        let (viewer_token, _) = self.token(&s.viewer_token_env, "server.viewer_token_env", env);
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
        let tls = self.tls(s, tls);
        Some(ServerConfig {
            listen: listen?,
            admin_listen: admin_listen?,
            admin_token,
            admin_token_env,
            viewer_token,
            max_body_bytes: max_body_bytes?,
            threads: threads?,
            grace_period_s: grace_period_s?,
            upgrade_sock: s.upgrade_sock.clone().unwrap_or(d.upgrade_sock),
            pid_file: s.pid_file.clone().unwrap_or(d.pid_file),
            circuit: CircuitParams {
                failures: circuit_failures?,
                cooldown_ms: circuit_cooldown_ms?,
            },
            tls: tls?,
        })
    }

    /// `tls_cert` and `tls_key`: both or neither, each naming a file; then the shell reads and
    /// checks the pair, and each problem it finds is reported at the key of its file.
    fn tls(&mut self, s: &FileServer, check: TlsCheck) -> Option<Option<TlsFiles>> {
        let (cert, key) = match (&s.tls_cert, &s.tls_key) {
            (None, None) => return Some(None),
            (Some(c), None) => {
                self.err(
                    Some(c.span()),
                    "server.tls_key",
                    "must be set too: tls_cert is set, and the gateway listener also needs \
                     the certificate's private key (a PEM file)",
                );
                return None;
            }
            (None, Some(k)) => {
                self.err(
                    Some(k.span()),
                    "server.tls_cert",
                    "must be set too: tls_key is set, and the gateway listener also needs \
                     the certificate chain (a PEM file)",
                );
                return None;
            }
            (Some(c), Some(k)) => (c, k),
        };
        let field = |part| match part {
            TlsPart::Cert => (cert, "server.tls_cert"),
            TlsPart::Key => (key, "server.tls_key"),
        };
        let mut named = true;
        for part in [TlsPart::Cert, TlsPart::Key] {
            let (v, name) = field(part);
            if v.get_ref().is_empty() {
                self.err(Some(v.span()), name, "must name a PEM file");
                named = false;
            }
        }
        if !named {
            return None;
        }
        let files = TlsFiles {
            cert: PathBuf::from(cert.get_ref()),
            key: PathBuf::from(key.get_ref()),
        };
        let problems = check(&files);
        if problems.is_empty() {
            return Some(Some(files));
        }
        for p in problems {
            let (v, name) = field(p.part);
            self.err(Some(v.span()), name, p.message);
        }
        None
    }
}
