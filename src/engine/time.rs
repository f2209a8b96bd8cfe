//! The one civil-date and RFC 3339 implementation: budget period keys, decision-record times
//! and admin timestamps all go through here.
//!
//! Engine module: must not import pingora, tokio or any shell module, and never reads a clock:
//! callers pass Unix milliseconds or days. Reading the clock is the shell's `clock`.

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (Howard Hinnant's
/// `civil_from_days`), valid for every day count Unix milliseconds can produce, so no date
/// crate is needed for three calendar keys and one timestamp format.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468; // shift the epoch to 0000-03-01
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of the 400-year era, [0, 146096]
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365], from March 1st
    let mp = (5 * doy + 2) / 153; // [0, 11], March = 0
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Unix ms → (year, month, day, hour, minute, second, millisecond), UTC.
fn utc_parts(time_ms: i64) -> (i64, u32, u32, i64, i64, i64, i64) {
    let (y, m, d) = civil_from_days(time_ms.div_euclid(86_400_000));
    let ms_of_day = time_ms.rem_euclid(86_400_000);
    let secs = ms_of_day / 1000;
    (
        y,
        m,
        d,
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        ms_of_day % 1000,
    )
}

/// Unix ms → `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC), for decision records and admin JSON.
pub fn rfc3339_millis(time_ms: i64) -> String {
    let mut buf = [0u8; 24];
    match rfc3339_millis_into(time_ms, &mut buf) {
        Some(s) => s.to_string(),
        None => {
            let (y, m, d, h, mi, s, ms) = utc_parts(time_ms);
            format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
        }
    }
}

/// [`rfc3339_millis`] into a stack buffer, for the ledger writer's hot loop (one per decision
/// row): no formatting machinery, no allocation. `None` for years outside 0000..=9999.
pub fn rfc3339_millis_into(time_ms: i64, buf: &mut [u8; 24]) -> Option<&str> {
    let (y, m, d, h, mi, s, ms) = utc_parts(time_ms);
    if !(0..=9999).contains(&y) {
        return None;
    }
    fn put(out: &mut [u8], mut v: i64) {
        for b in out.iter_mut().rev() {
            *b = b'0' + (v % 10) as u8;
            v /= 10;
        }
    }
    *buf = *b"0000-00-00T00:00:00.000Z";
    put(&mut buf[0..4], y);
    put(&mut buf[5..7], i64::from(m));
    put(&mut buf[8..10], i64::from(d));
    put(&mut buf[11..13], h);
    put(&mut buf[14..16], mi);
    put(&mut buf[17..19], s);
    put(&mut buf[20..23], ms);
    std::str::from_utf8(buf).ok()
}

/// (year, month, day) → days since 1970-01-01, proleptic Gregorian: the inverse of
/// [`civil_from_days`] (Howard Hinnant's `days_from_civil`). `m` is 1..=12.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400); // [0, 399]
    let mp = i64::from((m + 9) % 12); // March = 0
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if y % 4 == 0 && (y % 100 != 0 || y % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// An RFC 3339 date-time (`2027-03-31T00:00:00Z`, `2027-03-31T02:00:00.5+02:00`) → Unix
/// seconds. The offset is required (`Z` or `±HH:MM`); fractional seconds are allowed and
/// dropped (the instant is rounded down, so a deadline is never moved later); `T` may be `t`
/// or a space and `Z` may be `z`, as RFC 3339 permits. A leap second (`:60`) counts as the
/// next second. `None` for anything else, including impossible dates like `2027-02-30`.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    fn num(b: &[u8]) -> Option<u32> {
        if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(b.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0')))
    }
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let year = i64::from(num(&b[0..4])?);
    let month = num(&b[5..7])?;
    let day = num(&b[8..10])?;
    let (hour, minute, second) = (num(&b[11..13])?, num(&b[14..16])?, num(&b[17..19])?);
    if !(1..=12).contains(&month)
        || !(1..=days_in_month(year, month)).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &b[19..];
    if let Some(frac) = rest.strip_prefix(b".") {
        let digits = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        rest = &frac[digits..];
    }
    let offset_s = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let (oh, om) = (num(&[*h1, *h2])?, num(&[*m1, *m2])?);
            if oh > 23 || om > 59 {
                return None;
            }
            let off = i64::from(oh * 3600 + om * 60);
            if *sign == b'-' {
                -off
            } else {
                off
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let local = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second);
    Some(local - offset_s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leap_days_and_year_ends_are_right() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29), "a leap day");
        assert_eq!(civil_from_days(20_818), (2026, 12, 31));
        assert_eq!(civil_from_days(-1), (1969, 12, 31), "before the epoch");
    }

    #[test]
    fn rfc3339_conversion_matches_known_instants() {
        for (ms, text) in [
            (0, "1970-01-01T00:00:00.000Z"),
            (1_795_341_600_005, "2026-11-22T10:00:00.005Z"),
            (1_709_251_199_999, "2024-02-29T23:59:59.999Z"),
            (951_868_800_000, "2000-03-01T00:00:00.000Z"),
            (-1, "1969-12-31T23:59:59.999Z"),
            (-2_208_988_800_000, "1900-01-01T00:00:00.000Z"),
        ] {
            assert_eq!(rfc3339_millis(ms), text, "{ms}");
        }
        // Extremes must not panic, and take the slow path for years past 9999.
        let _ = rfc3339_millis(i64::MIN);
        let _ = rfc3339_millis(i64::MAX);
        assert!(rfc3339_millis(253_402_300_800_000).starts_with("10000-01-01T"));
        let mut buf = [0u8; 24];
        assert_eq!(rfc3339_millis_into(253_402_300_800_000, &mut buf), None);
        assert_eq!(
            rfc3339_millis_into(253_402_300_799_999, &mut buf),
            Some("9999-12-31T23:59:59.999Z")
        );
    }

    #[test]
    fn days_from_civil_inverts_civil_from_days() {
        for days in [-800_000, -1, 0, 1, 19_782, 20_818, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
    }

    #[test]
    fn rfc3339_times_parse_to_unix_seconds() {
        for (text, secs) in [
            ("1970-01-01T00:00:00Z", 0),
            ("2027-03-31T00:00:00Z", 1_806_451_200),
            ("2027-03-31T02:00:00+02:00", 1_806_451_200),
            ("2027-03-30T19:30:00-04:30", 1_806_451_200),
            ("2027-03-31T00:00:00.999Z", 1_806_451_200),
            ("2027-03-31t00:00:00z", 1_806_451_200),
            ("2027-03-31 00:00:00Z", 1_806_451_200),
            ("2024-02-29T23:59:59Z", 1_709_251_199),
            ("1969-12-31T23:59:59Z", -1),
            ("2016-12-31T23:59:60Z", 1_483_228_800),
        ] {
            assert_eq!(parse_rfc3339(text), Some(secs), "{text}");
        }
        for bad in [
            "",
            "2027-03-31",
            "2027-03-31T00:00:00",
            "2027-03-31T00:00Z",
            "2027-3-31T00:00:00Z",
            "2027-03-31T00:00:00.Z",
            "2027-03-31T00:00:00+0200",
            "2027-03-31T00:00:00+24:00",
            "2027-03-31T00:00:00 UTC",
            "2027-13-01T00:00:00Z",
            "2027-02-29T00:00:00Z",
            "2027-04-31T00:00:00Z",
            "2027-03-31T24:00:00Z",
            "2027-03-31T00:60:00Z",
            "2027-03-31T00:00:61Z",
            "+027-03-31T00:00:00Z",
            "2027-03-31X00:00:00Z",
            "2027-03-31T00:00:00Zjunk",
            "next tuesday",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
        }
    }
}
