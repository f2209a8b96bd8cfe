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
}
