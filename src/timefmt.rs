//! ISO 8601 / RFC 3339 timestamps, through the `time` crate.
//!
//! lockstore stores times as Unix milliseconds; these helpers format them the way
//! JavaScript's `Date.prototype.toISOString` does (what openclaw writes, e.g. the
//! sidecar lock's `createdAt`) and parse RFC 3339 input.

use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, OffsetDateTime, UtcOffset};

/// Formats Unix ms as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC, always 3 fraction digits,
/// as `toISOString`). Out-of-range values (beyond year ±9999) format as the
/// nearest representable instant.
pub fn iso_ms(ms: i64) -> String {
    let fmt =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    let ns = i128::from(ms) * 1_000_000;
    let t = OffsetDateTime::from_unix_timestamp_nanos(ns).unwrap_or(if ms < 0 {
        Date::MIN.midnight().assume_utc()
    } else {
        Date::MAX.midnight().assume_utc()
    });
    t.to_offset(UtcOffset::UTC)
        .format(&fmt)
        .unwrap_or_else(|_| ms.to_string())
}

/// Parses an RFC 3339 timestamp (`2026-05-12T09:00:00Z`,
/// `2026-05-12T11:00:00.5+02:00`; a space may replace the `T`, and the seconds
/// may be left out: `2026-05-12T09:00Z`) or a bare date `YYYY-MM-DD` (UTC
/// midnight) to Unix ms. `None` if it is neither.
pub fn parse_ms(s: &str) -> Option<i64> {
    let s = s.trim();
    if s.len() == 10 {
        let d = Date::parse(s, format_description!("[year]-[month]-[day]")).ok()?;
        return Some(d.midnight().assume_utc().unix_timestamp() * 1000);
    }
    let mut input = s.to_string();
    if input.as_bytes().get(10) == Some(&b' ') {
        input.replace_range(10..11, "T");
    }
    if input.len() > 16 && input.is_char_boundary(16) && input.as_bytes()[16] != b':' {
        input.insert_str(16, ":00");
    }
    let t = OffsetDateTime::parse(&input, &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// Unix milliseconds of `t` (negative before 1970; saturating beyond ±292
/// million years). The stores keep times as Unix ms on disk; the public API
/// takes and returns [`std::time::SystemTime`].
#[allow(dead_code)]
pub(crate) fn to_ms(t: std::time::SystemTime) -> i64 {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_millis())
            .map(|m| -m)
            .unwrap_or(i64::MIN),
    }
}

/// The instant `ms` Unix milliseconds after the epoch (before it when negative).
#[allow(dead_code)]
pub(crate) fn from_ms(ms: i64) -> std::time::SystemTime {
    let d = std::time::Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 {
        std::time::UNIX_EPOCH + d
    } else {
        std::time::UNIX_EPOCH - d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_to_iso_string() {
        assert_eq!(iso_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(iso_ms(1_780_056_000_123), "2026-05-29T12:00:00.123Z");
        assert_eq!(iso_ms(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn parses_rfc3339_and_dates() {
        assert_eq!(parse_ms("2024-05-12T09:00:00Z"), Some(1_715_504_400_000));
        assert_eq!(
            parse_ms("2024-05-12T11:00:00.5+02:00"),
            Some(1_715_504_400_500)
        );
        assert_eq!(parse_ms("2024-05-12 09:00:00Z"), Some(1_715_504_400_000));
        assert_eq!(parse_ms("2024-05-12T09:00Z"), Some(1_715_504_400_000));
        assert_eq!(parse_ms("1970-01-02"), Some(86_400_000));
        assert_eq!(parse_ms("2024-02-30"), None);
        assert_eq!(parse_ms("yesterday"), None);
        for ms in [0, 1, 999, 1_715_504_400_500, 4_102_444_800_000] {
            assert_eq!(parse_ms(&iso_ms(ms)), Some(ms));
        }
    }
}
