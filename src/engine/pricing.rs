//! Prices and money. Prices are read once at load (US dollars per million tokens, as humans and
//! provider price pages write them) and normalised to integer pico-dollars per token; every
//! cost is integer nano-dollars, so sums never drift the way `f64` sums do.
//!
//! Core module: no pingora, no tokio, no I/O.

use crate::engine::usage::{Usage, WireFormat};

/// Money in nano-dollars (1e-9 USD). `u64` holds $18 billion, far past any budget.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Nanos(pub u64);

impl Nanos {
    pub const ZERO: Nanos = Nanos(0);

    /// Dollars from a config value; `None` for negative, NaN or absurd (> $1e9) amounts.
    pub fn from_usd(usd: f64) -> Option<Nanos> {
        if !usd.is_finite() || !(0.0..=1e9).contains(&usd) {
            return None;
        }
        Some(Nanos((usd * 1e9).round() as u64))
    }

    /// For display and JSON only; arithmetic stays in integers.
    pub fn as_usd(self) -> f64 {
        self.0 as f64 / 1e9
    }

    /// Dollars with six decimals, rounded half up (`12.345679`): integer arithmetic, no float
    /// formatting on the request path.
    pub fn usd_6dp(self) -> String {
        let micros = self.0 / 1000 + u64::from(self.0 % 1000 >= 500);
        let mut s = String::with_capacity(24);
        push_u64(&mut s, micros / 1_000_000);
        s.push('.');
        let mut frac = micros % 1_000_000;
        let mut digits = [b'0'; 6];
        for d in digits.iter_mut().rev() {
            *d = b'0' + (frac % 10) as u8;
            frac /= 10;
        }
        for d in digits {
            s.push(char::from(d));
        }
        s
    }

    /// Dollars with every nano-dollar kept (`0.0001645`, `50.0`, `0.0`): the integer part, then
    /// up to nine decimals with trailing zeros trimmed but at least one kept, so the text is a
    /// JSON number that reads back to exactly this amount. Integer arithmetic only.
    pub fn usd_exact(self) -> String {
        let mut s = String::with_capacity(24);
        self.push_usd_exact(&mut s);
        s
    }

    /// [`Nanos::usd_exact`] appended to `out`, without the formatting machinery (the fleet's
    /// decision record writes three of these on every request).
    pub fn push_usd_exact(self, out: &mut String) {
        let (whole, mut frac) = (self.0 / 1_000_000_000, self.0 % 1_000_000_000);
        push_u64(out, whole);
        out.push('.');
        if frac == 0 {
            out.push('0');
            return;
        }
        let mut width = 9;
        while frac % 10 == 0 {
            frac /= 10;
            width -= 1;
        }
        let mut digits = [b'0'; 9];
        for d in digits[..width].iter_mut().rev() {
            *d = b'0' + (frac % 10) as u8;
            frac /= 10;
        }
        for &d in &digits[..width] {
            out.push(char::from(d));
        }
    }

    pub fn saturating_add(self, o: Nanos) -> Nanos {
        Nanos(self.0.saturating_add(o.0))
    }

    pub fn saturating_sub(self, o: Nanos) -> Nanos {
        Nanos(self.0.saturating_sub(o.0))
    }
}

/// `n` in decimal appended to `out`, as `write!(out, "{n}")` writes it, without the formatting
/// machinery.
pub fn push_u64(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[i..] {
        out.push(char::from(d));
    }
}

/// One model's prices, in pico-dollars (1e-12 USD) per token: `$/Mtok × 1e6`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Price {
    pub input: u64,
    pub output: u64,
    /// Cache reads; defaults to the input price when the config gives none.
    pub cache_read: u64,
    /// Cache writes (Anthropic); defaults to the input price.
    pub cache_write: u64,
    /// The model's largest possible output: the worst case reserved when a request sets no
    /// `max_tokens`.
    pub max_output_tokens: Option<u64>,
}

/// Dollars per million tokens → pico-dollars per token; `None` for negative, NaN or absurd.
pub fn per_mtok_to_pico(usd_per_mtok: f64) -> Option<u64> {
    if !usd_per_mtok.is_finite() || !(0.0..=1e6).contains(&usd_per_mtok) {
        return None;
    }
    Some((usd_per_mtok * 1e6).round() as u64)
}

/// `tokens × pico` in nano-dollars, rounded up so that a charge is never below the truth.
pub fn cost_of(tokens: u64, pico_per_token: u64) -> Nanos {
    let pico = tokens as u128 * pico_per_token as u128;
    let nanos = pico.div_ceil(1000);
    Nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

impl Price {
    /// The cost of a reported (or estimated) usage, in `format`'s token semantics (see
    /// [`Usage::uncached_input_tokens`]).
    pub fn cost(&self, usage: &Usage, format: WireFormat) -> Nanos {
        cost_of(usage.uncached_input_tokens(format), self.input)
            .saturating_add(cost_of(
                usage.cache_read_tokens.unwrap_or(0),
                self.cache_read,
            ))
            .saturating_add(cost_of(
                usage.cache_write_tokens.unwrap_or(0),
                self.cache_write,
            ))
            .saturating_add(cost_of(usage.completion_tokens.unwrap_or(0), self.output))
    }

    /// Worst case of a request before it runs: every prompt token at the full input price (a
    /// cache can only make it cheaper) plus every allowed output token.
    pub fn worst_case(&self, prompt_tokens_upper: u64, output_tokens: u64) -> Nanos {
        cost_of(prompt_tokens_upper, self.input.max(self.cache_write))
            .saturating_add(cost_of(output_tokens, self.output))
    }
}

/// Prices keyed by the model name the provider sees; longest matching prefix wins, so
/// `gpt-4o-mini` beats `gpt-4o` for `gpt-4o-mini-2024-07-18`.
#[derive(Clone, Debug, Default)]
pub struct PriceTable {
    /// Sorted by key length, longest first.
    entries: Vec<(String, Price)>,
}

impl PriceTable {
    pub fn new(mut entries: Vec<(String, Price)>) -> Self {
        entries.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        PriceTable { entries }
    }

    /// The price and the key that matched it (the key is the bounded `model` metric label).
    pub fn lookup(&self, model: &str) -> Option<(&str, &Price)> {
        self.entries
            .iter()
            .find(|(k, _)| model.starts_with(k.as_str()))
            .map(|(k, p)| (k.as_str(), p))
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(k, _)| k.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price(input: f64, output: f64) -> Price {
        Price {
            input: per_mtok_to_pico(input).unwrap(),
            output: per_mtok_to_pico(output).unwrap(),
            cache_read: per_mtok_to_pico(input / 10.0).unwrap(),
            cache_write: per_mtok_to_pico(input * 1.25).unwrap(),
            max_output_tokens: None,
        }
    }

    #[test]
    fn a_million_tokens_cost_exactly_the_listed_price() {
        let p = price(0.15, 0.60);
        let u = Usage {
            prompt_tokens: Some(1_000_000),
            completion_tokens: Some(1_000_000),
            ..Usage::default()
        };
        assert_eq!(
            p.cost(&u, WireFormat::OpenAiChat),
            Nanos::from_usd(0.75).unwrap()
        );
    }

    #[test]
    fn tiny_costs_round_up_never_to_zero() {
        // 1 token at $0.0001/Mtok is 0.1 nano-dollars: charged as 1, not lost.
        assert_eq!(cost_of(1, per_mtok_to_pico(0.0001).unwrap()), Nanos(1));
        assert_eq!(cost_of(1, per_mtok_to_pico(0.15).unwrap()), Nanos(150));
        assert_eq!(cost_of(0, 150_000), Nanos(0));
    }

    #[test]
    fn openai_cached_tokens_are_a_discounted_subset_of_the_prompt() {
        let p = price(1.0, 0.0);
        let u = Usage {
            prompt_tokens: Some(1000),
            cache_read_tokens: Some(400),
            ..Usage::default()
        };
        // 1 token at $1/Mtok is 1000 nano-dollars: 600 uncached at $1/M, 400 cached at $0.1/M.
        assert_eq!(
            p.cost(&u, WireFormat::OpenAiChat),
            Nanos(600 * 1000 + 400 * 100)
        );
    }

    #[test]
    fn anthropic_cache_tokens_come_on_top_of_input_tokens() {
        let p = price(3.0, 15.0);
        let u = Usage {
            prompt_tokens: Some(100),
            cache_read_tokens: Some(1000),
            cache_write_tokens: Some(200),
            completion_tokens: Some(10),
        };
        let expected = 100 * 3000 + 1000 * 300 + 200 * 3750 + 10 * 15000;
        assert_eq!(p.cost(&u, WireFormat::AnthropicMessages), Nanos(expected));
    }

    #[test]
    fn unknown_usage_costs_nothing_rather_than_guessing() {
        assert_eq!(
            price(3.0, 15.0).cost(&Usage::default(), WireFormat::OpenAiChat),
            Nanos::ZERO
        );
    }

    #[test]
    fn longest_prefix_wins() {
        let t = PriceTable::new(vec![
            ("gpt-4o".into(), price(2.5, 10.0)),
            ("gpt-4o-mini".into(), price(0.15, 0.6)),
        ]);
        assert_eq!(t.lookup("gpt-4o-mini-2024-07-18").unwrap().0, "gpt-4o-mini");
        assert_eq!(t.lookup("gpt-4o-2024-08-06").unwrap().0, "gpt-4o");
        assert!(t.lookup("claude-3").is_none());
    }

    #[test]
    fn bad_amounts_are_rejected() {
        assert!(Nanos::from_usd(-1.0).is_none());
        assert!(Nanos::from_usd(f64::NAN).is_none());
        assert!(per_mtok_to_pico(f64::INFINITY).is_none());
        assert_eq!(Nanos::from_usd(50.0), Some(Nanos(50_000_000_000)));
    }

    #[test]
    fn huge_products_saturate_instead_of_overflowing() {
        assert_eq!(cost_of(u64::MAX, u64::MAX), Nanos(u64::MAX));
    }

    #[test]
    fn exact_dollars_keep_every_nano_and_trim_only_trailing_zeros() {
        for (n, want) in [
            (0u64, "0.0"),
            (1, "0.000000001"),
            (164_500, "0.0001645"),
            (50_000_000_000, "50.0"),
            (1_250_000_000, "1.25"),
            (u64::MAX, "18446744073.709551615"),
        ] {
            assert_eq!(Nanos(n).usd_exact(), want, "{n} nanos");
        }
    }

    /// The reference: what `usd_exact` wrote with `format!` before it wrote digits itself.
    fn usd_exact_by_format(n: u64) -> String {
        let (whole, frac) = (n / 1_000_000_000, n % 1_000_000_000);
        let digits = format!("{frac:09}");
        let kept = digits.trim_end_matches('0');
        format!("{whole}.{}", if kept.is_empty() { "0" } else { kept })
    }

    use proptest::strategy::Strategy as _;

    proptest::proptest! {
        #[test]
        fn exact_dollars_and_integers_are_written_as_format_writes_them(
            n in proptest::prop_oneof![
                0u64..2_000_000_000,
                proptest::prelude::any::<u64>(),
                (0u32..20).prop_map(|e| 10u64.pow(e)),
                (0u32..20).prop_map(|e| 10u64.pow(e) - 1),
            ]
        ) {
            proptest::prop_assert_eq!(Nanos(n).usd_exact(), usd_exact_by_format(n));
            let micros = n / 1000 + u64::from(n % 1000 >= 500);
            proptest::prop_assert_eq!(
                Nanos(n).usd_6dp(),
                format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
            );
            let mut s = String::from("x");
            push_u64(&mut s, n);
            proptest::prop_assert_eq!(s, format!("x{n}"));
        }
    }

    #[test]
    fn six_decimal_dollars_round_half_up_like_the_float_format() {
        for (n, want) in [
            (0u64, "0.000000"),
            (499, "0.000000"),
            (500, "0.000001"),
            (1_000_000_000, "1.000000"),
            (999_999_999_500, "1000.000000"),
            (12_345_678_901, "12.345679"),
            (u64::MAX, "18446744073.709552"),
        ] {
            assert_eq!(Nanos(n).usd_6dp(), want, "{n} nanos");
        }
    }
}
