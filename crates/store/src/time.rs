//! Clock and calendar helpers: every day boundary in the store is a UTC day.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds in a UTC day (leap seconds do not exist in Unix time).
pub(crate) const DAY_SECS: u64 = 86_400;

/// Now, in seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    // A clock before 1970 is a broken host; 0 keeps records valid rather than failing requests.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Days since the epoch of the UTC day containing `at`.
pub(crate) fn day_number(at: u64) -> u64 {
    at / DAY_SECS
}

/// `YYYY-MM-DD` of a day number. Days beyond chrono's range (year 262143) clamp to its maximum.
pub(crate) fn day_label(day: u64) -> String {
    let secs = i64::try_from(day.saturating_mul(DAY_SECS)).unwrap_or(i64::MAX);
    chrono::DateTime::from_timestamp(secs, 0)
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC)
        .format("%Y-%m-%d")
        .to_string()
}

/// Unix time of 00:00 UTC on the first day of the month containing `at`.
pub(crate) fn month_start(at: u64) -> u64 {
    use chrono::Datelike as _;
    let secs = i64::try_from(at).unwrap_or(i64::MAX);
    let Some(date) = chrono::DateTime::from_timestamp(secs, 0).map(|t| t.date_naive()) else {
        return day_number(at) * DAY_SECS;
    };
    date.with_day(1)
        .and_then(|first| first.and_hms_opt(0, 0, 0))
        .and_then(|midnight| u64::try_from(midnight.and_utc().timestamp()).ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_utc_calendar_days() {
        // 2024-02-29T23:59:59Z and the second after it.
        assert_eq!(day_label(day_number(1_709_251_199)), "2024-02-29");
        assert_eq!(day_label(day_number(1_709_251_200)), "2024-03-01");
        assert_eq!(day_label(0), "1970-01-01");
    }

    #[test]
    fn months_start_on_their_first_day() {
        assert_eq!(month_start(1_709_251_199), 1_706_745_600); // 2024-02-01
        assert_eq!(month_start(1_709_251_200), 1_709_251_200); // 2024-03-01
        assert_eq!(month_start(0), 0);
    }
}
