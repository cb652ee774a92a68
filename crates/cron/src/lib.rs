//! Cron schedules as a CronJob's `schedule` reads them (upstream parses them with
//! robfig/cron's standard parser): five fields — minute, hour, day of month, month, day of
//! week — each `*`, a value, a range `a-b`, a step `*/n` or `a-b/n`, or a list of those;
//! month and weekday names; `?` as `*` in the day fields; the macros `@yearly`
//! (`@annually`), `@monthly`, `@weekly`, `@daily` (`@midnight`), `@hourly` and
//! `@every <duration>`. As in cron, when both day fields are restricted a day matching
//! either runs.
//!
//! Pure: [`Schedule::parse`] and [`Schedule::next_after`], in a [`jiff::tz::TimeZone`].

use jiff::civil::{Date, DateTime, Time};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, ToSpan};

/// Why a schedule does not parse (upstream's wording where it has one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Not five fields nor a known macro.
    #[error("expected exactly 5 fields, found {0}: {1}")]
    FieldCount(usize, String),
    /// A field's value is out of its range or not a number or name.
    #[error("{0}")]
    Field(String),
    /// A macro the parser does not know.
    #[error("unrecognized descriptor: {0}")]
    Descriptor(String),
    /// A time zone given inside the schedule.
    #[error("cannot use TZ or CRON_TZ in schedule, use timeZone field instead")]
    TimeZoneInSchedule,
}

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// The five fields, as bit sets.
    Fields {
        /// Minutes 0–59.
        minutes: u64,
        /// Hours 0–23.
        hours: u64,
        /// Days of month 1–31.
        days: u64,
        /// Months 1–12.
        months: u64,
        /// Days of week 0–6 (Sunday 0).
        weekdays: u64,
        /// The day-of-month field was `*` or `?`.
        any_day: bool,
        /// The day-of-week field was `*` or `?`.
        any_weekday: bool,
    },
    /// `@every <duration>`: fixed intervals (rounded to seconds, at least one).
    Every(SignedDuration),
}

const MONTHS: [&str; 12] =
    ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

fn value(text: &str, min: u32, max: u32, names: &[&str], name_base: u32) -> Result<u32, Error> {
    if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(text)) {
        return Ok(name_base + i as u32);
    }
    let v: u32 = text.parse().map_err(|_| {
        Error::Field(format!(
            "failed to parse int from {text}: strconv.Atoi: parsing {text:?}: invalid syntax"
        ))
    })?;
    if v < min {
        return Err(Error::Field(format!(
            "beginning of range ({v}) below minimum ({min}): {text}"
        )));
    }
    if v > max {
        return Err(Error::Field(format!("end of range ({v}) above maximum ({max}): {text}")));
    }
    Ok(v)
}

/// One field as a bit set, and whether it was a bare `*`/`?`.
fn field(
    text: &str,
    min: u32,
    max: u32,
    names: &[&str],
    name_base: u32,
) -> Result<(u64, bool), Error> {
    let mut bits = 0u64;
    let mut star = false;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s.parse().map_err(|_| {
                    Error::Field(format!(
                        "failed to parse int from {s}: strconv.Atoi: parsing {s:?}: invalid syntax"
                    ))
                })?;
                if step == 0 {
                    return Err(Error::Field(format!(
                        "step of range should be a positive number: {part}"
                    )));
                }
                (r, Some(step))
            }
            None => (part, None),
        };
        let (start, end) = if range == "*" || range == "?" {
            if step.is_none() {
                star = true;
            }
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) =
                (value(a, min, max, names, name_base)?, value(b, min, max, names, name_base)?);
            if a > b {
                return Err(Error::Field(format!(
                    "beginning of range ({a}) beyond end of range ({b}): {part}"
                )));
            }
            (a, b)
        } else {
            let v = value(range, min, max, names, name_base)?;
            // `n/step` runs from n to the end, as robfig's parser reads it.
            (v, if step.is_some() { max } else { v })
        };
        let step = step.unwrap_or(1);
        let mut v = start;
        while v <= end {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok((bits, star))
}

fn all(min: u32, max: u32) -> u64 {
    (min..=max).fold(0, |b, v| b | 1 << v)
}

impl Schedule {
    /// Parses a schedule.
    pub fn parse(text: &str) -> Result<Schedule, Error> {
        let text = text.trim();
        if text.starts_with("TZ=") || text.starts_with("CRON_TZ=") {
            return Err(Error::TimeZoneInSchedule);
        }
        if let Some(rest) = text.strip_prefix('@') {
            let fields = |m: &str, h: &str, d: &str, mo: &str, w: &str| {
                Schedule::parse(&format!("{m} {h} {d} {mo} {w}"))
            };
            return match rest {
                "yearly" | "annually" => fields("0", "0", "1", "1", "*"),
                "monthly" => fields("0", "0", "1", "*", "*"),
                "weekly" => fields("0", "0", "*", "*", "0"),
                "daily" | "midnight" => fields("0", "0", "*", "*", "*"),
                "hourly" => fields("0", "*", "*", "*", "*"),
                _ => match rest.strip_prefix("every ") {
                    Some(d) => {
                        let span: jiff::Span = d.trim().parse().map_err(|e| {
                            Error::Field(format!("failed to parse duration {text}: {e}"))
                        })?;
                        let every = SignedDuration::try_from(span).map_err(|e| {
                            Error::Field(format!("failed to parse duration {text}: {e}"))
                        })?;
                        let secs = every.as_secs().max(1);
                        Ok(Schedule::Every(SignedDuration::from_secs(secs)))
                    }
                    None => Err(Error::Descriptor(text.to_owned())),
                },
            };
        }
        let parts: Vec<&str> = text.split_whitespace().collect();
        if parts.len() != 5 {
            return Err(Error::FieldCount(parts.len(), text.to_owned()));
        }
        let (minutes, _) = field(parts[0], 0, 59, &[], 0)?;
        let (hours, _) = field(parts[1], 0, 23, &[], 0)?;
        let (days, any_day) = field(parts[2], 1, 31, &[], 0)?;
        let (months, _) = field(parts[3], 1, 12, &MONTHS, 1)?;
        // 7 is Sunday too, as in cron.
        let (mut weekdays, any_weekday) = field(parts[4], 0, 7, &WEEKDAYS, 0)?;
        if weekdays & (1 << 7) != 0 {
            weekdays = (weekdays & !(1 << 7)) | 1;
        }
        debug_assert!(minutes & !all(0, 59) == 0);
        Ok(Schedule::Fields { minutes, hours, days, months, weekdays, any_day, any_weekday })
    }

    fn day_matches(&self, date: Date) -> bool {
        let Schedule::Fields { days, months, weekdays, any_day, any_weekday, .. } = self else {
            return true;
        };
        if months & (1 << date.month()) == 0 {
            return false;
        }
        let dom = days & (1 << date.day()) != 0;
        let dow = weekdays & (1 << date.weekday().to_sunday_zero_offset()) != 0;
        if *any_day || *any_weekday { dom && dow } else { dom || dow }
    }

    /// The first time strictly after `after` the schedule runs, in zone `tz` (none within
    /// five years: the schedule never runs, e.g. on February 30th).
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let (minutes, hours) = match self {
            Schedule::Every(every) => return after.checked_add(*every).ok(),
            Schedule::Fields { minutes, hours, .. } => (*minutes, *hours),
        };
        // Runs are whole minutes: start from the next one.
        let start = after
            .checked_add(SignedDuration::from_secs(60 - after.as_second().rem_euclid(60)))
            .ok()?;
        let local = tz.to_datetime(start);
        let mut date = local.date();
        for day in 0..(366 * 5) {
            if day > 0 {
                date = date.checked_add(1.day()).ok()?;
            }
            if !self.day_matches(date) {
                continue;
            }
            for hour in 0..24u32 {
                if hours & (1 << hour) == 0 {
                    continue;
                }
                for minute in 0..60u32 {
                    if minutes & (1 << minute) == 0 {
                        continue;
                    }
                    let time = Time::new(hour as i8, minute as i8, 0, 0).ok()?;
                    let candidate = DateTime::from_parts(date, time);
                    if candidate
                        < DateTime::from_parts(
                            local.date(),
                            Time::new(local.hour(), local.minute(), 0, 0).ok()?,
                        )
                    {
                        continue;
                    }
                    // A local time skipped by a DST change runs at the moment after the gap;
                    // one that occurs twice, at the first.
                    let Ok(at) = tz.to_ambiguous_timestamp(candidate).compatible() else {
                        continue;
                    };
                    if at > after {
                        return Some(at);
                    }
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(text: &str) -> Timestamp {
        text.parse().expect("a timestamp")
    }

    fn next(schedule: &str, after: &str) -> String {
        Schedule::parse(schedule)
            .expect("a schedule")
            .next_after(ts(after), &TimeZone::UTC)
            .map(|t| t.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn fields_ranges_steps_lists_and_names() {
        assert_eq!(next("*/15 * * * *", "2026-01-01T10:07:30Z"), "2026-01-01T10:15:00Z");
        assert_eq!(next("0 9-17/4 * * MON-FRI", "2026-01-02T17:30:00Z"), "2026-01-05T09:00:00Z");
        assert_eq!(next("30 2 1,15 * *", "2026-01-01T03:00:00Z"), "2026-01-15T02:30:00Z");
        assert_eq!(next("0 0 * JUN *", "2026-01-01T00:00:00Z"), "2026-06-01T00:00:00Z");
        assert_eq!(next("* * * * *", "2026-01-01T00:00:00Z"), "2026-01-01T00:01:00Z");
        // Both day fields restricted: either matches (the 13th, or a Friday).
        assert_eq!(next("0 0 13 * 5", "2026-02-01T00:00:00Z"), "2026-02-06T00:00:00Z");
        assert_eq!(next("0 0 * * 7", "2026-01-01T00:00:00Z"), "2026-01-04T00:00:00Z");
        assert_eq!(next("0 0 30 2 *", "2026-01-01T00:00:00Z"), "");
    }

    #[test]
    fn macros_and_every() {
        assert_eq!(next("@hourly", "2026-01-01T10:07:00Z"), "2026-01-01T11:00:00Z");
        assert_eq!(next("@daily", "2026-01-01T10:07:00Z"), "2026-01-02T00:00:00Z");
        assert_eq!(next("@weekly", "2026-01-01T10:07:00Z"), "2026-01-04T00:00:00Z");
        assert_eq!(next("@monthly", "2026-01-01T10:07:00Z"), "2026-02-01T00:00:00Z");
        assert_eq!(next("@yearly", "2026-01-01T10:07:00Z"), "2027-01-01T00:00:00Z");
        assert_eq!(next("@every 90s", "2026-01-01T10:07:00Z"), "2026-01-01T10:08:30Z");
    }

    #[test]
    fn bad_schedules_say_why() {
        assert!(matches!(Schedule::parse("* * * *"), Err(Error::FieldCount(4, _))));
        assert!(matches!(Schedule::parse("60 * * * *"), Err(Error::Field(_))));
        assert!(matches!(Schedule::parse("5-1 * * * *"), Err(Error::Field(_))));
        assert!(matches!(Schedule::parse("*/0 * * * *"), Err(Error::Field(_))));
        assert!(matches!(Schedule::parse("@fortnightly"), Err(Error::Descriptor(_))));
        assert_eq!(Schedule::parse("TZ=UTC * * * * *"), Err(Error::TimeZoneInSchedule));
        assert_eq!(
            Schedule::parse("0 0 1 13 *").unwrap_err().to_string(),
            "end of range (13) above maximum (12): 13"
        );
    }

    #[test]
    fn time_zones_move_the_runs() {
        let tz = TimeZone::get("America/New_York").expect("the zone database");
        let s = Schedule::parse("0 9 * * *").expect("a schedule");
        // 09:00 in New York in winter is 14:00 UTC.
        assert_eq!(s.next_after(ts("2026-01-05T00:00:00Z"), &tz), Some(ts("2026-01-05T14:00:00Z")));
        // On the spring-forward day 02:30 does not exist: it runs at 03:30 EDT.
        let s = Schedule::parse("30 2 * * *").expect("a schedule");
        assert_eq!(s.next_after(ts("2026-03-08T05:00:00Z"), &tz), Some(ts("2026-03-08T07:30:00Z")));
    }
}
