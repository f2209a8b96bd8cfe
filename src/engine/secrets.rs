//! The built-in credential detectors behind a project's `block_secrets`: which strings in a
//! prompt are credentials, and what to call them in the block message.
//!
//! Pure: this module must not import pingora or tokio, nor do I/O.
//!
//! Every prompt of such a project passes through [`find_secret`], so ordinary prose and code
//! must pay only for one multi-literal search (`PREFILTER`: the literal anchors every format
//! starts with, in aho-corasick's SIMD Teddy searcher). Only where an anchor is
//! found does a detector look at the bytes that follow. A detector wants the anchor at the
//! start of a token (the byte before it is not a token byte), so a scan inside one long token
//! is cut short at once and the whole search stays linear in the text.
//!
//! The formats follow the providers' published token formats and the gitleaks rules. Each
//! detector also rejects obvious placeholders (too few distinct characters, AWS's documented
//! `EXAMPLE` keys), because a prompt that asks about credential formats is not a leak.

use regex::Regex;
use std::sync::LazyLock;

/// A kind of credential, named in the block message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretKind {
    PrivateKey,
    AwsAccessKey,
    OpenAiKey,
    AnthropicKey,
    GitHubToken,
    SlackToken,
    SlackWebhook,
    GoogleApiKey,
    StripeKey,
    Jwt,
}

impl SecretKind {
    pub const ALL: [SecretKind; 10] = [
        SecretKind::PrivateKey,
        SecretKind::AwsAccessKey,
        SecretKind::OpenAiKey,
        SecretKind::AnthropicKey,
        SecretKind::GitHubToken,
        SecretKind::SlackToken,
        SecretKind::SlackWebhook,
        SecretKind::GoogleApiKey,
        SecretKind::StripeKey,
        SecretKind::Jwt,
    ];

    /// A stable identifier, for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            SecretKind::PrivateKey => "private_key",
            SecretKind::AwsAccessKey => "aws_access_key",
            SecretKind::OpenAiKey => "openai_api_key",
            SecretKind::AnthropicKey => "anthropic_api_key",
            SecretKind::GitHubToken => "github_token",
            SecretKind::SlackToken => "slack_token",
            SecretKind::SlackWebhook => "slack_webhook",
            SecretKind::GoogleApiKey => "google_api_key",
            SecretKind::StripeKey => "stripe_key",
            SecretKind::Jwt => "jwt",
        }
    }

    /// What the block message says the prompt contains.
    pub fn description(self) -> &'static str {
        match self {
            SecretKind::PrivateKey => "a PEM private key",
            SecretKind::AwsAccessKey => "an AWS access key",
            SecretKind::OpenAiKey => "an OpenAI API key",
            SecretKind::AnthropicKey => "an Anthropic API key",
            SecretKind::GitHubToken => "a GitHub token",
            SecretKind::SlackToken => "a Slack token",
            SecretKind::SlackWebhook => "a Slack webhook URL",
            SecretKind::GoogleApiKey => "a Google API key",
            SecretKind::StripeKey => "a Stripe secret key",
            SecretKind::Jwt => "a JSON Web Token",
        }
    }
}

/// The first credential found in `text`, if any.
pub fn find_secret(text: &str) -> Option<SecretKind> {
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(at) = next_anchor(bytes, from) {
        for anchor in ANCHORS {
            if !bytes[at..].starts_with(anchor.literal.as_bytes()) {
                continue;
            }
            if anchor.token_start && at > 0 && is_token_byte(bytes[at - 1]) {
                continue;
            }
            if let Some(kind) = (anchor.check)(text, at, at + anchor.literal.len()) {
                return Some(kind);
            }
        }
        // Anchors start with an ASCII byte, so the next byte starts a character. Resuming
        // there (not after the match) also finds anchors that overlap this one.
        from = at + 1;
    }
    None
}

/// A literal every credential of some kinds starts with, and the detector that decides.
struct Anchor {
    literal: &'static str,
    /// The byte before the literal must not be a token byte.
    token_start: bool,
    /// `(text, start of the literal, end of the literal)`.
    check: fn(&str, usize, usize) -> Option<SecretKind>,
}

const fn anchor(
    literal: &'static str,
    token_start: bool,
    check: fn(&str, usize, usize) -> Option<SecretKind>,
) -> Anchor {
    Anchor {
        literal,
        token_start,
        check,
    }
}

const ANCHORS: &[Anchor] = &[
    anchor("-----BEGIN", false, private_key),
    anchor("AKIA", true, aws_access_key_id),
    anchor("ASIA", true, aws_access_key_id),
    // Labels: `aws_secret_access_key = ...`, `AWS_SECRET_ACCESS_KEY=...`, `"SecretAccessKey": ...`.
    anchor("secret_access_key", false, aws_secret_key),
    anchor("SECRET_ACCESS_KEY", false, aws_secret_key),
    anchor("SecretAccessKey", false, aws_secret_key),
    anchor("sk-", true, sk_dash),
    anchor("sk_live_", true, stripe),
    anchor("sk_test_", true, stripe),
    anchor("rk_live_", true, stripe),
    anchor("rk_test_", true, stripe),
    anchor("ghp_", true, github_classic),
    anchor("gho_", true, github_classic),
    anchor("ghu_", true, github_classic),
    anchor("ghs_", true, github_classic),
    anchor("ghr_", true, github_classic),
    anchor("github_pat_", true, github_fine_grained),
    anchor("xoxa-", true, slack_token),
    anchor("xoxb-", true, slack_token),
    anchor("xoxe-", true, slack_token),
    anchor("xoxp-", true, slack_token),
    anchor("xoxr-", true, slack_token),
    anchor("xoxs-", true, slack_token),
    anchor("xapp-", true, slack_app_token),
    anchor("hooks.slack.com/", false, slack_webhook),
    anchor("AIza", true, google_api_key),
    anchor("eyJ", true, jwt),
];

/// Where the next anchor starts, at or after `from`: the leftmost one.
fn next_anchor(bytes: &[u8], from: usize) -> Option<usize> {
    next_anchor_in(&PREFILTER, bytes, from)
}

fn next_anchor_in(prefilter: &Prefilter, bytes: &[u8], from: usize) -> Option<usize> {
    if from >= bytes.len() {
        return None;
    }
    let span = aho_corasick::Span::from(from..bytes.len());
    match prefilter {
        Prefilter::Teddy(s) => s.find_in(bytes, span).map(|m| m.start()),
        Prefilter::Automaton(a) => a
            .find(aho_corasick::Input::new(bytes).span(span))
            .map(|m| m.start()),
    }
}

/// The anchors in aho-corasick's packed (Teddy, SIMD) searcher: what the regex crate runs for
/// an alternation of literals, without the regex engine's per-call set-up (a cache from its
/// pool, the search state), which was a fifth of the cost over a prompt's many short texts.
/// Teddy needs SSSE3 (x86) or NEON; elsewhere an Aho-Corasick automaton does the same search.
enum Prefilter {
    Teddy(aho_corasick::packed::Searcher),
    Automaton(aho_corasick::AhoCorasick),
}

static PREFILTER: LazyLock<Prefilter> = LazyLock::new(|| prefilter(true));

fn prefilter(teddy: bool) -> Prefilter {
    let literals = || ANCHORS.iter().map(|a| a.literal);
    let packed = teddy
        .then(|| {
            aho_corasick::packed::Config::new()
                .match_kind(aho_corasick::packed::MatchKind::LeftmostFirst)
                .builder()
                .extend(literals())
                .build()
        })
        .flatten();
    match packed {
        Some(searcher) => Prefilter::Teddy(searcher),
        None => Prefilter::Automaton(
            aho_corasick::AhoCorasick::builder()
                .match_kind(aho_corasick::MatchKind::LeftmostFirst)
                .build(literals())
                .expect("27 short literals make an automaton"),
        ),
    }
}

/// A PEM private key needs some of its body, not just its header: a prompt that mentions
/// `-----BEGIN PRIVATE KEY-----` is documentation, one that carries base64 after it (past
/// optional `Proc-Type:`-style or PGP armor headers) is a key. 16 characters are enough: every
/// DER key opens with about that much fixed structure (`MIIEowIBAAKCAQEA`), English words are rarely
/// shorter, and placeholders (`XXXX…`) use too few distinct characters. Newlines may be real or
/// the two characters `\n`, as in a service-account JSON pasted as text.
static PEM_PRIVATE_KEY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^-----BEGIN[ A-Z0-9]{0,40}PRIVATE KEY(?: BLOCK)?-----(?:\s|\\[rn])*(?:[A-Za-z][A-Za-z0-9-]*: ?[^\r\n\\]{0,100}(?:\s|\\[rn])+){0,4}([A-Za-z0-9+/]{16})",
    )
    .expect("constant pattern")
});

/// How far past `-----BEGIN` the PEM pattern may look: header, armor headers, one base64 line.
const PEM_WINDOW: usize = 640;

fn private_key(text: &str, start: usize, _: usize) -> Option<SecretKind> {
    let mut end = text.len().min(start.saturating_add(PEM_WINDOW));
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let body = PEM_PRIVATE_KEY
        .captures(&text[start..end])
        .and_then(|c| c.get(1));
    body.is_some_and(|b| distinct(b.as_str().as_bytes()) >= 8)
        .then_some(SecretKind::PrivateKey)
}

/// `(AKIA|ASIA)[A-Z0-9]{16}` as a whole word. AWS documents `AKIAIOSFODNN7EXAMPLE`.
fn aws_access_key_id(text: &str, _: usize, at: usize) -> Option<SecretKind> {
    let b = text.as_bytes();
    let n = span(b, at, |c| c.is_ascii_uppercase() || c.is_ascii_digit());
    let body = &b[at..at + n];
    (n == 16 && ends_word(b, at + n) && !body.ends_with(b"EXAMPLE") && distinct(body) >= 8)
        .then_some(SecretKind::AwsAccessKey)
}

/// A secret access key (40 of `[A-Za-z0-9/+]`) is indistinguishable from other base64, so it
/// only counts right after its label: `label["']? *[:=] *["']?KEY`.
fn aws_secret_key(text: &str, _: usize, at: usize) -> Option<SecretKind> {
    let b = text.as_bytes();
    let mut i = at;
    i += usize::from(matches!(b.get(i), Some(b'"' | b'\'')));
    i += span(b, i, |c| c == b' ' || c == b'\t');
    if !matches!(b.get(i), Some(b':' | b'=')) {
        return None;
    }
    i += 1;
    i += span(b, i, |c| c == b' ' || c == b'\t');
    i += usize::from(matches!(b.get(i), Some(b'"' | b'\'')));
    let base64 = |c: u8| c.is_ascii_alphanumeric() || c == b'/' || c == b'+';
    let n = span(b, i, base64);
    let key = &b[i..i + n];
    let ends = b.get(i + n).is_none_or(|&c| !base64(c) && c != b'=');
    (n == 40 && ends && memchr::memmem::find(key, b"EXAMPLE").is_none() && distinct(key) >= 12)
        .then_some(SecretKind::AwsAccessKey)
}

/// `sk-` starts Anthropic keys (`sk-ant-api03-…`, `sk-ant-admin01-…`, OAuth `sk-ant-oat01-…`)
/// and OpenAI keys (`sk-…T3BlbkFJ…`, `sk-proj-…`, `sk-svcacct-…`, `sk-admin-…`), and by
/// imitation many other providers' keys (OpenRouter, DeepSeek, LiteLLM…), reported as OpenAI.
fn sk_dash(text: &str, _: usize, at: usize) -> Option<SecretKind> {
    let b = text.as_bytes();
    if b[at..].starts_with(b"ant-") {
        // sk-ant-<letters><2 digits>-<body>: the documented keys have a 93-character body
        // ending in AA; OAuth tokens publish no length, so 32 is a floor for all of them.
        let mut i = at + 4;
        let letters = span(b, i, |c| c.is_ascii_lowercase());
        i += letters;
        let digits = span(b, i, |c| c.is_ascii_digit());
        i += digits;
        if (2..=8).contains(&letters) && digits == 2 && b.get(i) == Some(&b'-') {
            let n = span(b, i + 1, is_token_byte);
            if n >= 32 && distinct(&b[i + 1..i + 1 + n]) >= 10 {
                return Some(SecretKind::AnthropicKey);
            }
        }
    }
    let n = span(b, at, is_token_byte);
    let tail = &b[at..at + n];
    // "T3BlbkFJ" is base64 of "OpenAI": every OpenAI key format so far embeds it.
    if n >= 40 && memchr::memmem::find(tail, b"T3BlbkFJ").is_some() {
        return Some(SecretKind::OpenAiKey);
    }
    // Otherwise: at least 20 characters with a random-looking stretch (16+ alphanumerics
    // mixing letters and digits), so kebab-case words (`sk-learn-style-api`) and short ids
    // (`sk-1`) never count.
    (n >= 20 && has_random_run(tail, 16) && distinct(tail) >= 10).then_some(SecretKind::OpenAiKey)
}

/// `(sk|rk)_(live|test)_[0-9A-Za-z]{24,}`: Stripe secret and restricted keys.
fn stripe(text: &str, _: usize, at: usize) -> Option<SecretKind> {
    let b = text.as_bytes();
    let n = span(b, at, |c| c.is_ascii_alphanumeric());
    (n >= 24 && distinct(&b[at..at + n]) >= 10).then_some(SecretKind::StripeKey)
}

/// `gh[pousr]_[A-Za-z0-9]{36}`: GitHub's classic personal, OAuth, user-to-server,
/// server-to-server and refresh tokens.
fn github_classic(text: &str, _: usize, at: usize) -> Option<SecretKind> {
    let b = text.as_bytes();
    let n = span(b, at, |c| c.is_ascii_alphanumeric());
    (n == 36 && ends_word(b, at + n) && distinct(&b[at..at + n]) >= 10)
        .then_some(SecretKind::GitHubToken)
}

/// `github_pat_[A-Za-z0-9_]{82}`: fine-grained personal access tokens (22 + `_` + 59).
fn github_fine_grained(text: &str, _: usize, at: usize) -> Option<SecretKind> {
    let b = text.as_bytes();
    let n = span(b, at, |c| c.is_ascii_alphanumeric() || c == b'_');
    (n == 82 && distinct(&b[at..at + n]) >= 10).then_some(SecretKind::GitHubToken)
}

/// `xox[abeprs]-…`: bot, user, workspace, refresh and configuration tokens. Real ones are
/// dash-separated numeric ids and a random part, so the rest must be 20+ characters with a
/// digit; `xoxb-your-token-here` and `xoxo` (hugs and kisses) do not count.
fn slack_token(text: &str, _: usize, at: usize) -> Option<SecretKind> {
    let b = text.as_bytes();
    let n = span(b, at, |c| c.is_ascii_alphanumeric() || c == b'-');
    let rest = &b[at..at + n];
    (n >= 20 && rest.iter().any(u8::is_ascii_digit) && distinct(rest) >= 8)
        .then_some(SecretKind::SlackToken)
}

/// `xapp-<digit>-…`: app-level tokens.
fn slack_app_token(text: &str, start: usize, at: usize) -> Option<SecretKind> {
    let b = text.as_bytes();
    if !b.get(at).is_some_and(u8::is_ascii_digit) || b.get(at + 1) != Some(&b'-') {
        return None;
    }
    slack_token(text, start, at + 2)
}

/// `hooks.slack.com/(services|workflows|triggers)/T…/B…/<secret>`: the last path segment
/// is the secret; Slack's documented `XXXXXXXX…` placeholder has one distinct character.
fn slack_webhook(text: &str, _: usize, at: usize) -> Option<SecretKind> {
    let b = text.as_bytes();
    let rest = &b[at..];
    let kind = [&b"services/"[..], b"workflows/", b"triggers/"]
        .into_iter()
        .find(|p| rest.starts_with(p))?;
    let i = at + kind.len();
    let n = span(b, i, |c| c.is_ascii_alphanumeric() || c == b'/');
    let path = &b[i..i + n];
    let slashes = path.iter().filter(|&&c| c == b'/').count();
    let secret = path.rsplit(|&c| c == b'/').next().unwrap_or_default();
    (n >= 40 && slashes >= 2 && secret.len() >= 20 && distinct(secret) >= 8)
        .then_some(SecretKind::SlackWebhook)
}

/// `AIza[0-9A-Za-z_-]{35}` as a whole token.
fn google_api_key(text: &str, _: usize, at: usize) -> Option<SecretKind> {
    let b = text.as_bytes();
    let n = span(b, at, is_token_byte);
    (n == 35 && distinct(&b[at..at + n]) >= 10).then_some(SecretKind::GoogleApiKey)
}

/// `eyJ….eyJ….…`: three base64url segments, the first two JSON objects (`{"` is `eyJ`).
/// `eyJhbGciOi…` alone is a JWT header, not a token.
fn jwt(text: &str, _: usize, at: usize) -> Option<SecretKind> {
    let b = text.as_bytes();
    let header = span(b, at, is_token_byte);
    let mut i = at + header;
    if header < 10 || b.get(i) != Some(&b'.') || !b[i + 1..].starts_with(b"eyJ") {
        return None;
    }
    i += 4;
    let payload = span(b, i, is_token_byte);
    i += payload;
    if payload < 10 || b.get(i) != Some(&b'.') {
        return None;
    }
    let signature = span(b, i + 1, is_token_byte);
    (signature >= 10).then_some(SecretKind::Jwt)
}

/// Bytes that can continue a token: an anchor right after one is inside a longer string
/// (`task-`, `disk-`, base64), not at the start of a credential.
fn is_token_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'-'
}

/// Whether position `i` ends a word (a `\b` after a fixed-length token).
fn ends_word(b: &[u8], i: usize) -> bool {
    b.get(i)
        .is_none_or(|&c| !(c.is_ascii_alphanumeric() || c == b'_'))
}

/// Length of the run of `class` bytes starting at `from`.
fn span(b: &[u8], from: usize, class: impl Fn(u8) -> bool) -> usize {
    b.get(from..)
        .map_or(0, |rest| rest.iter().take_while(|&&c| class(c)).count())
}

/// Distinct ASCII bytes: random credentials use many, placeholders (`xxxx`, `0000`) few.
fn distinct(b: &[u8]) -> u32 {
    let mut seen = 0u128;
    for &c in b {
        if c < 128 {
            seen |= 1u128 << c;
        }
    }
    seen.count_ones()
}

/// A run of at least `min` ASCII alphanumerics holding both a letter and a digit.
fn has_random_run(tail: &[u8], min: usize) -> bool {
    tail.split(|c| !c.is_ascii_alphanumeric()).any(|run| {
        run.len() >= min
            && run.iter().any(u8::is_ascii_digit)
            && run.iter().any(u8::is_ascii_alphabetic)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random string over `alphabet`, so fake credentials are
    /// format-valid without being anyone's real key.
    fn fake(alphabet: &str, len: usize, seed: u64) -> String {
        let chars: Vec<char> = alphabet.chars().collect();
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                chars[(x % chars.len() as u64) as usize]
            })
            .collect()
    }

    const ALNUM: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    const UPPER_DIGITS: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    const URLSAFE: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const BASE64: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const DIGITS: &str = "0123456789";

    fn in_prose(secret: &str) -> String {
        format!("Here is my config, please debug it:\n  key = \"{secret}\"\nThanks!")
    }

    fn pem(label: &str, seed: u64) -> String {
        let lines: Vec<String> = (0..5).map(|i| fake(BASE64, 64, seed + i)).collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
    }

    fn aws_key_id(seed: u64) -> String {
        format!("AKIA{}", fake(UPPER_DIGITS, 16, seed))
    }

    fn anthropic_key(kind: &str, seed: u64) -> String {
        format!("sk-ant-{kind}-{}AA", fake(URLSAFE, 93, seed))
    }

    fn openai_project_key(seed: u64) -> String {
        format!(
            "sk-proj-{}T3BlbkFJ{}",
            fake(URLSAFE, 74, seed),
            fake(URLSAFE, 74, seed + 1)
        )
    }

    fn jwt_token(seed: u64) -> String {
        format!(
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ{}.{}",
            fake(URLSAFE, 40, seed),
            fake(URLSAFE, 43, seed + 1)
        )
    }

    #[test]
    fn kinds_have_distinct_names_and_descriptions() {
        for (i, a) in SecretKind::ALL.iter().enumerate() {
            for b in &SecretKind::ALL[i + 1..] {
                assert_ne!(a.as_str(), b.as_str());
                assert_ne!(a.description(), b.description());
            }
        }
        assert_eq!(SecretKind::PrivateKey.as_str(), "private_key");
        assert_eq!(SecretKind::AwsAccessKey.as_str(), "aws_access_key");
        assert_eq!(SecretKind::PrivateKey.description(), "a PEM private key");
    }

    #[test]
    fn private_keys_of_every_pem_flavour_are_found() {
        for label in [
            "PRIVATE KEY",
            "RSA PRIVATE KEY",
            "EC PRIVATE KEY",
            "OPENSSH PRIVATE KEY",
            "ENCRYPTED PRIVATE KEY",
            "PGP PRIVATE KEY BLOCK",
        ] {
            assert_eq!(
                find_secret(&in_prose(&pem(label, 1))),
                Some(SecretKind::PrivateKey),
                "{label}"
            );
        }
    }

    #[test]
    fn private_keys_with_armor_headers_or_escaped_newlines_are_found() {
        let encrypted = format!(
            "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,{}\n\n{}\n",
            fake("0123456789ABCDEF", 32, 3),
            fake(BASE64, 64, 4)
        );
        assert_eq!(find_secret(&encrypted), Some(SecretKind::PrivateKey));
        let pgp = format!(
            "-----BEGIN PGP PRIVATE KEY BLOCK-----\nVersion: GnuPG v2\n\n{}\n",
            fake(BASE64, 64, 5)
        );
        assert_eq!(find_secret(&pgp), Some(SecretKind::PrivateKey));
        // A service-account JSON pasted as text keeps its escapes.
        let json = format!(
            r#"{{"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----\n{}\n"}}"#,
            fake(BASE64, 64, 6)
        );
        assert_eq!(find_secret(&json), Some(SecretKind::PrivateKey));
    }

    #[test]
    fn a_private_key_cut_to_its_first_line_is_still_found() {
        let first_line =
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----";
        assert_eq!(find_secret(first_line), Some(SecretKind::PrivateKey));
    }

    #[test]
    fn pem_headers_without_a_key_body_and_public_keys_do_not_fire() {
        let doc =
            "# Keys\nA public key starts with `-----BEGIN PUBLIC KEY-----` and a private one with \
                   `-----BEGIN PRIVATE KEY-----`; never paste the latter. Certificates use \
                   -----BEGIN CERTIFICATE-----.\n";
        assert_eq!(find_secret(doc), None);
        assert_eq!(find_secret(&pem("PUBLIC KEY", 7)), None);
        assert_eq!(find_secret(&pem("CERTIFICATE", 8)), None);
        assert_eq!(
            find_secret("-----BEGIN PRIVATE KEY-----\n...\n-----END PRIVATE KEY-----"),
            None
        );
        assert_eq!(
            find_secret(
                "-----BEGIN PRIVATE KEY-----\n<your key goes here>\n-----END PRIVATE KEY-----"
            ),
            None
        );
        assert_eq!(
            find_secret("-----BEGIN EC PRIVATE KEY-----\nXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX\n"),
            None
        );
        assert_eq!(
            find_secret(
                "Paste it after -----BEGIN OPENSSH PRIVATE KEY----- and before the END line."
            ),
            None
        );
    }

    #[test]
    fn aws_access_key_ids_are_found_as_whole_words() {
        assert_eq!(
            find_secret(&in_prose(&aws_key_id(1))),
            Some(SecretKind::AwsAccessKey)
        );
        let temp = format!("ASIA{}", fake(UPPER_DIGITS, 16, 2));
        assert_eq!(
            find_secret(&format!("AWS_ACCESS_KEY_ID={temp}")),
            Some(SecretKind::AwsAccessKey)
        );
        assert_eq!(
            find_secret(&format!("X{}", aws_key_id(3))),
            None,
            "inside a word"
        );
        assert_eq!(
            find_secret(&format!("{}Z", aws_key_id(3))),
            None,
            "longer than a key"
        );
        assert_eq!(
            find_secret(&aws_key_id(3)[..19]),
            None,
            "shorter than a key"
        );
    }

    #[test]
    fn aws_documentation_keys_and_placeholders_do_not_fire() {
        assert_eq!(
            find_secret("aws_access_key_id = AKIAIOSFODNN7EXAMPLE"),
            None
        );
        assert_eq!(find_secret("key = AKIAXXXXXXXXXXXXXXXX"), None);
        assert_eq!(
            find_secret("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
            None
        );
        assert_eq!(find_secret("TRAVEL IN ASIA IS FUN; ASIAN CUISINE"), None);
    }

    #[test]
    fn aws_secret_keys_are_found_after_their_label() {
        let secret = fake(BASE64, 40, 9);
        for line in [
            format!("aws_secret_access_key = {secret}"),
            format!("AWS_SECRET_ACCESS_KEY={secret}\n"),
            format!(r#"{{"SecretAccessKey": "{secret}"}}"#),
            format!("secret_access_key: '{secret}'"),
        ] {
            assert_eq!(find_secret(&line), Some(SecretKind::AwsAccessKey), "{line}");
        }
        // Without the label, 40 base64 characters are just base64.
        assert_eq!(find_secret(&format!("blob {secret} end")), None);
        assert_eq!(find_secret("os.environ[\"AWS_SECRET_ACCESS_KEY\"]"), None);
    }

    #[test]
    fn openai_keys_of_every_format_are_found() {
        let legacy = format!("sk-{}T3BlbkFJ{}", fake(ALNUM, 20, 10), fake(ALNUM, 20, 11));
        let svcacct = format!(
            "sk-svcacct-{}T3BlbkFJ{}",
            fake(URLSAFE, 58, 12),
            fake(URLSAFE, 58, 13)
        );
        let admin = format!(
            "sk-admin-{}T3BlbkFJ{}",
            fake(URLSAFE, 58, 14),
            fake(URLSAFE, 58, 15)
        );
        let plain48 = format!("sk-{}", fake(ALNUM, 48, 16));
        for key in [legacy, openai_project_key(17), svcacct, admin, plain48] {
            assert_eq!(
                find_secret(&in_prose(&key)),
                Some(SecretKind::OpenAiKey),
                "{key}"
            );
        }
        assert_eq!(
            find_secret(&format!("Authorization: Bearer {}", openai_project_key(18))),
            Some(SecretKind::OpenAiKey)
        );
    }

    #[test]
    fn openai_keys_are_found_by_their_marker_even_when_dashes_break_up_the_random_part() {
        let broken = |seed: u64| {
            let chunks: Vec<String> = (0..6).map(|i| fake(ALNUM, 11, seed + i)).collect();
            chunks.join("_")
        };
        let key = format!("sk-proj-{}_T3BlbkFJ_{}", broken(200), broken(210));
        assert_eq!(find_secret(&in_prose(&key)), Some(SecretKind::OpenAiKey));
    }

    #[test]
    fn anthropic_keys_are_found_and_not_reported_as_openai() {
        for kind in ["api03", "admin01", "oat01"] {
            assert_eq!(
                find_secret(&in_prose(&anthropic_key(kind, 20))),
                Some(SecretKind::AnthropicKey),
                "{kind}"
            );
        }
        assert_eq!(find_secret("ANTHROPIC_API_KEY=sk-ant-api03-tooShort"), None);
    }

    #[test]
    fn github_tokens_are_found() {
        for prefix in ["ghp", "gho", "ghu", "ghs", "ghr"] {
            let token = format!("{prefix}_{}", fake(ALNUM, 36, 30));
            assert_eq!(
                find_secret(&in_prose(&token)),
                Some(SecretKind::GitHubToken),
                "{token}"
            );
        }
        let fine = format!("github_pat_{}_{}", fake(ALNUM, 22, 31), fake(ALNUM, 59, 32));
        assert_eq!(find_secret(&in_prose(&fine)), Some(SecretKind::GitHubToken));
        assert_eq!(
            find_secret(&format!("ghp_{}", fake(ALNUM, 35, 33))),
            None,
            "one short"
        );
        assert_eq!(
            find_secret("ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"),
            None,
            "placeholder"
        );
    }

    #[test]
    fn slack_tokens_and_webhooks_are_found() {
        let bot = format!(
            "xoxb-{}-{}-{}",
            fake(DIGITS, 12, 40),
            fake(DIGITS, 13, 41),
            fake(ALNUM, 24, 42)
        );
        let user = format!(
            "xoxp-{}-{}-{}-{}",
            fake(DIGITS, 12, 43),
            fake(DIGITS, 12, 44),
            fake(DIGITS, 12, 45),
            fake("0123456789abcdef", 32, 46)
        );
        let app = format!(
            "xapp-1-A{}-{}-{}",
            fake(UPPER_DIGITS, 10, 47),
            fake(DIGITS, 13, 48),
            fake(ALNUM, 64, 49)
        );
        let config = format!("xoxe.xoxp-1-{}", fake(ALNUM, 163, 50));
        for token in [bot, user, app, config] {
            assert_eq!(
                find_secret(&in_prose(&token)),
                Some(SecretKind::SlackToken),
                "{token}"
            );
        }
        let hook = format!(
            "https://hooks.slack.com/services/T{}/B{}/{}",
            fake(UPPER_DIGITS, 10, 51),
            fake(UPPER_DIGITS, 10, 52),
            fake(ALNUM, 24, 53)
        );
        assert_eq!(
            find_secret(&in_prose(&hook)),
            Some(SecretKind::SlackWebhook)
        );
    }

    #[test]
    fn slack_placeholders_and_xoxo_do_not_fire() {
        assert_eq!(
            find_secret("SLACK_BOT_TOKEN=xoxb-your-bot-token-goes-here"),
            None
        );
        assert_eq!(find_secret("xoxb-xxxxxxxxx-xxxxxxxxxx-xxxxxxxxxxxx"), None);
        assert_eq!(find_secret("xoxb-12345-abcd234"), None);
        assert_eq!(
            find_secret("https://example.com/2018-250-xoxo-indieweb-1234567890-photo.jpg"),
            None
        );
        assert_eq!(
            find_secret(
                "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX"
            ),
            None
        );
        assert_eq!(
            find_secret("Post to hooks.slack.com/services/ with your URL."),
            None
        );
    }

    #[test]
    fn google_api_keys_are_found_as_whole_tokens() {
        let key = format!("AIza{}", fake(URLSAFE, 35, 60));
        assert_eq!(find_secret(&in_prose(&key)), Some(SecretKind::GoogleApiKey));
        assert_eq!(
            find_secret(&format!(
                "https://maps.googleapis.com/maps/api?key={key}&v=3"
            )),
            Some(SecretKind::GoogleApiKey)
        );
        assert_eq!(find_secret(&format!("{key}abc")), None, "longer than a key");
        assert_eq!(find_secret(&format!("x{key}")), None, "inside a token");
    }

    #[test]
    fn stripe_keys_are_found() {
        for prefix in ["sk_live_", "sk_test_", "rk_live_", "rk_test_"] {
            let key = format!("{prefix}{}", fake(ALNUM, 24, 70));
            assert_eq!(
                find_secret(&in_prose(&key)),
                Some(SecretKind::StripeKey),
                "{key}"
            );
        }
        assert_eq!(find_secret("stripe.api_key = 'sk_test_short'"), None);
        assert_eq!(
            find_secret("def task_test_runs_the_whole_suite_again(): pass"),
            None
        );
    }

    #[test]
    fn jwts_need_all_three_segments() {
        assert_eq!(
            find_secret(&format!("Authorization: Bearer {}", jwt_token(80))),
            Some(SecretKind::Jwt)
        );
        assert_eq!(
            find_secret("The header eyJhbGciOiJIUzI1NiJ9 decodes to {\"alg\":\"HS256\"}"),
            None
        );
        assert_eq!(find_secret("eyJhbGciOi"), None);
        let two = jwt_token(81);
        let two = &two[..two.rfind('.').unwrap_or(0)];
        assert_eq!(find_secret(two), None, "no signature");
        assert_eq!(
            find_secret(&format!("{two}. is unsigned")),
            None,
            "empty signature (alg none)"
        );
        assert_eq!(
            find_secret(&format!("{two}.abc")),
            None,
            "signature too short"
        );
    }

    #[test]
    fn the_first_credential_in_the_text_is_reported() {
        let text = format!("{} then {}", jwt_token(90), aws_key_id(91));
        assert_eq!(find_secret(&text), Some(SecretKind::Jwt));
        let text = format!("{} then {}", aws_key_id(91), jwt_token(90));
        assert_eq!(find_secret(&text), Some(SecretKind::AwsAccessKey));
    }

    #[test]
    fn credentials_after_non_ascii_text_are_found() {
        let text = format!("Voilà — ключ: «{}» 🔑", aws_key_id(92));
        assert_eq!(find_secret(&text), Some(SecretKind::AwsAccessKey));
        let text = format!(
            "日本語のテキスト -----BEGIN{}",
            &pem("PRIVATE KEY", 93)["-----BEGIN".len()..]
        );
        assert_eq!(find_secret(&text), Some(SecretKind::PrivateKey));
    }

    #[test]
    fn words_containing_sk_dash_and_short_sk_ids_do_not_fire() {
        for text in [
            "ask-me-anything sessions and task-123 and disk-usage-report-2024-final-v2",
            "risk-adjusted-returns-for-2024-q3-portfolio-analysis",
            "sk-1",
            "sk-abc123",
            "Set the key to sk-... (your key here)",
            "sk-learn-style-estimator-interface-for-pipelines",
            "OPENAI_API_KEY=sk-your-api-key-here-replace-me-now",
            // Ids with a hex tail after a word ending in "sk": only the token start rules these out.
            "see task-3f9a2c7e81b04d6fa2c9e1b7 and disk-9c1e4b7a2f3d8e6c0b5a9d2f",
            "kiosk_live_8f2b1c9d7e3a4f6b0c5d2e9a1b7c and dusk_test_3a9f8e7d6c5b4a3f2e1d0c9b8a",
        ] {
            assert_eq!(find_secret(text), None, "{text}");
        }
    }

    #[test]
    fn code_reading_keys_from_the_environment_does_not_fire() {
        let python = r#"
import os
from openai import OpenAI

client = OpenAI(api_key=os.environ["OPENAI_API_KEY"])
aws_key = os.getenv("AWS_ACCESS_KEY_ID")
stripe.api_key = os.environ.get("STRIPE_SECRET_KEY")  # sk_live_... in production
headers = {"Authorization": f"Bearer {os.environ['GITHUB_TOKEN']}"}  # ghp_...
"#;
        assert_eq!(find_secret(python), None);
    }

    #[test]
    fn base64_uuids_hashes_and_ids_do_not_fire() {
        let texts = [
            fake(BASE64, 4096, 100),
            "550e8400-e29b-41d4-a716-446655440000 and 6ba7b810-9dad-11d1-80b4-00c04fd430c8".to_string(),
            "commit 9fceb02d0ae598e95dc970b74767f19372d61af8 (sha1), sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".to_string(),
            // A JSON document base64-encoded, but one segment only.
            "eyJuYW1lIjoiQWxpY2UiLCJhZ2UiOjMwLCJjaXR5IjoiUGFyaXMifQ==".to_string(),
            "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==".to_string(),
        ];
        for text in &texts {
            assert_eq!(find_secret(text), None, "{}", &text[..text.len().min(80)]);
        }
    }

    #[test]
    fn long_prose_does_not_fire() {
        let lorem = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor \
                     incididunt ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud \
                     exercitation ullamco laboris nisi ut aliquip ex ea commodo consequat. Duis aute irure \
                     dolor in reprehenderit in voluptate velit esse cillum dolore eu fugiat nulla pariatur. \
                     Excepteur sint occaecat cupidatat non proident, sunt in culpa qui officia deserunt \
                     mollit anim id est laborum. ";
        let text = lorem.repeat(10_240 / lorem.len() + 1);
        assert!(text.len() >= 10_240);
        assert_eq!(find_secret(&text), None);
    }

    #[test]
    fn rust_source_does_not_fire() {
        assert_eq!(find_secret(include_str!("prompt.rs")), None);
        let rust = r#"
fn risk_score(task: &Task) -> u32 {
    let disk_usage = task.disk_usage_bytes / 1024;
    let ask = format!("ask-{}", task.id);
    match task.kind { Kind::AsiaPacific => 1, _ => disk_usage as u32 }
}
"#;
        assert_eq!(find_secret(rust), None);
    }

    #[test]
    fn a_long_run_of_anchor_like_text_is_clean() {
        // Speed is the regex crate's linear-time guarantee and is measured in
        // load-tests/scan_bench.rs; a wall-clock bound here would only flake on a busy machine.
        let adversarial = "sk-".repeat(100_000)
            + &"eyJ".repeat(100_000)
            + &"-----BEGIN PRIVATE KEY-----".repeat(10_000);
        assert_eq!(find_secret(&adversarial), None);
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    /// The search the detectors used before the packed searcher: a regex alternation of the
    /// escaped anchors. Both searches must find the same next anchor from every position.
    fn regex_next(text: &str, from: usize) -> Option<usize> {
        static ALTERNATION: LazyLock<Option<Regex>> = LazyLock::new(|| {
            let escaped: Vec<String> = ANCHORS.iter().map(|a| regex::escape(a.literal)).collect();
            Regex::new(&escaped.join("|")).ok()
        });
        let re = ALTERNATION.as_ref()?;
        re.find_at(text, from).map(|m| m.start())
    }

    fn assert_same_anchors(text: &str) {
        static BOTH: LazyLock<(Prefilter, Prefilter)> =
            LazyLock::new(|| (prefilter(true), prefilter(false)));
        let (teddy, automaton) = &*BOTH;
        assert!(matches!(automaton, Prefilter::Automaton(_)));
        for from in (0..=text.len()).filter(|&i| text.is_char_boundary(i)) {
            let want = regex_next(text, from);
            assert_eq!(
                next_anchor_in(teddy, text.as_bytes(), from),
                want,
                "{text:?} from {from}"
            );
            assert_eq!(
                next_anchor_in(automaton, text.as_bytes(), from),
                want,
                "{text:?} from {from}"
            );
        }
    }

    #[test]
    fn the_anchor_search_finds_what_the_regex_alternation_found() {
        let all: String = ANCHORS
            .iter()
            .map(|a| a.literal)
            .collect::<Vec<_>>()
            .join(" ");
        for text in [
            "",
            "sk",
            "sk-",
            "a sk-",
            "xsk-sk_live_",
            "-----BEGIN",
            "----BEGIN -----BEGIN",
            "ghp_gho_ghu_ghs_ghr_github_pat_",
            "xoxa-xoxb-xoxe-xoxp-xoxr-xoxs-xapp-",
            "hooks.slack.com/hooks.slack.com",
            "AKIAASIAAIzaeyJ",
            "secret_access_keySECRET_ACCESS_KEYSecretAccessKey",
            "Voilà — ключ: «AKIA» 🔑 eyJ",
            all.as_str(),
        ] {
            assert_same_anchors(text);
        }
        let long = format!(
            "{}sk-{}eyJ",
            "prose without anchors ".repeat(40),
            "y".repeat(100)
        );
        assert_same_anchors(&long);
    }

    proptest! {
        #[test]
        fn the_anchor_search_agrees_with_the_regex_alternation(parts in prop::collection::vec(
            prop_oneof![
                prop::sample::select(ANCHORS.iter().map(|a| a.literal).collect::<Vec<_>>()).prop_map(str::to_string),
                "[a-zA-Z0-9_ ./-]{0,12}", "\\PC{0,3}",
            ], 0..12)) {
            assert_same_anchors(&parts.concat());
        }

        #[test]
        fn arbitrary_strings_never_panic(s in any::<String>()) {
            let _ = find_secret(&s);
        }

        #[test]
        fn strings_built_from_anchors_never_panic(parts in prop::collection::vec(
            prop_oneof![
                Just("-----BEGIN PRIVATE KEY-----".to_string()),
                Just("sk-".to_string()), Just("sk-ant-api03-".to_string()), Just("AKIA".to_string()),
                Just("eyJ".to_string()), Just(".".to_string()), Just("xoxb-".to_string()), Just("xapp-1-".to_string()),
                Just("hooks.slack.com/services/".to_string()), Just("/".to_string()),
                Just("secret_access_key = ".to_string()), Just("github_pat_".to_string()), Just("\\n".to_string()),
                "[A-Za-z0-9_+/=-]{0,40}", "\\PC{0,4}",
            ], 0..24)) {
            let _ = find_secret(&parts.concat());
        }
    }
}
