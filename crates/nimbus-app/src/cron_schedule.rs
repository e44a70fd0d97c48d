//! Schedules of Convex cron jobs and their run times.
//!
//! A schedule is the JSON object the Convex npm library's `crons.export()` writes for one
//! job: `{"type": "interval", "seconds": 30}`, `{"type": "daily", "hourUTC": 3}`,
//! `{"type": "cron", "cron": "*/15 * * * *"}` and so on. [`Schedule::parse`] validates it
//! and [`Schedule::next_after`] computes when the job runs next. Everything is UTC, and
//! times are `f64` milliseconds since the Unix epoch, as JavaScript's `Date.now()` gives.
//!
//! Calendar arithmetic (day numbers to and from year/month/day) is done here, without a
//! date library, with the proleptic Gregorian calendar.

use serde_json::{Map, Value};

/// Milliseconds in a minute.
const MINUTE_MS: f64 = 60_000.0;
/// Minutes in a day.
const DAY_MINUTES: i64 = 24 * 60;
/// The largest distance from the epoch a JavaScript `Date` can represent, in milliseconds.
const MAX_DATE_MS: f64 = 8.64e15;
/// How many days after the start a calendar schedule's next run is searched for.
const SEARCH_DAYS: i64 = 5 * 366;
/// The hours mask of schedules that run every hour: bits 0..=23.
const ALL_HOURS: u64 = (1 << 24) - 1;
/// Interval periods stay below this many milliseconds (2^53), so they are exact as `f64`.
const MAX_PERIOD_MS: u64 = 1 << 53;

/// Lowercase weekday names, Sunday first: the index is the weekday number.
const WEEKDAYS: [&str; 7] = [
    "sunday",
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
];

/// The unit of an interval schedule, as the key it was written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IntervalUnit {
    Seconds,
    Minutes,
    Hours,
}

impl IntervalUnit {
    const ALL: [IntervalUnit; 3] = [
        IntervalUnit::Seconds,
        IntervalUnit::Minutes,
        IntervalUnit::Hours,
    ];

    fn key(self) -> &'static str {
        match self {
            IntervalUnit::Seconds => "seconds",
            IntervalUnit::Minutes => "minutes",
            IntervalUnit::Hours => "hours",
        }
    }

    fn millis(self) -> u64 {
        match self {
            IntervalUnit::Seconds => 1_000,
            IntervalUnit::Minutes => 60_000,
            IntervalUnit::Hours => 3_600_000,
        }
    }
}

/// When a cron job runs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Schedule {
    /// Every `count` units.
    Interval { count: u64, unit: IntervalUnit },
    /// Every hour at `minute_utc`; without it, at a minute derived from the job's identifier.
    Hourly { minute_utc: Option<u8> },
    /// Every day at `hour_utc:minute_utc`.
    Daily { hour_utc: u8, minute_utc: u8 },
    /// Every week on `day_of_week` (0 = Sunday … 6 = Saturday) at `hour_utc:minute_utc`.
    Weekly {
        day_of_week: u8,
        hour_utc: u8,
        minute_utc: u8,
    },
    /// Every month that has day `day` (1..=31), on that day at `hour_utc:minute_utc`.
    Monthly {
        day: u8,
        hour_utc: u8,
        minute_utc: u8,
    },
    /// A standard five-field cron expression.
    Cron(CronExpr),
}

/// A parsed five-field cron expression: the set of allowed values of each field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CronExpr {
    /// The expression's fields, joined by single spaces.
    text: String,
    matcher: Matcher,
}

impl Schedule {
    /// Parses a schedule object as `crons.export()` writes it.
    pub(crate) fn parse(json: &Value) -> Result<Schedule, String> {
        let Some(object) = json.as_object() else {
            return Err(format!("a schedule must be a JSON object, got {json}"));
        };
        let kind = match object.get("type") {
            Some(Value::String(kind)) => kind.as_str(),
            Some(other) => return Err(format!("schedule \"type\" must be a string, got {other}")),
            None => return Err("schedule needs a \"type\"".to_string()),
        };
        match kind {
            "interval" => parse_interval(object),
            "hourly" => {
                let minute_utc = optional_integer(object, "hourly", "minuteUTC", 0, 59)?;
                Ok(Schedule::Hourly {
                    minute_utc: minute_utc.map(small),
                })
            }
            "daily" => {
                let (hour_utc, minute_utc) = hour_and_minute(object, "daily")?;
                Ok(Schedule::Daily {
                    hour_utc,
                    minute_utc,
                })
            }
            "weekly" => {
                let day_of_week = match object.get("dayOfWeek") {
                    Some(Value::String(name)) => WEEKDAYS
                        .iter()
                        .position(|day| day.eq_ignore_ascii_case(name))
                        .map(|index| small(index as u64)),
                    _ => None,
                };
                let Some(day_of_week) = day_of_week else {
                    let got = object
                        .get("dayOfWeek")
                        .map_or_else(|| "nothing".to_string(), Value::to_string);
                    return Err(format!(
                        "weekly schedule: \"dayOfWeek\" must be a day name from \"sunday\" \
                         to \"saturday\", got {got}"
                    ));
                };
                let (hour_utc, minute_utc) = hour_and_minute(object, "weekly")?;
                Ok(Schedule::Weekly {
                    day_of_week,
                    hour_utc,
                    minute_utc,
                })
            }
            "monthly" => {
                let day = required_integer(object, "monthly", "day", 1, 31)?;
                let (hour_utc, minute_utc) = hour_and_minute(object, "monthly")?;
                Ok(Schedule::Monthly {
                    day: small(day),
                    hour_utc,
                    minute_utc,
                })
            }
            "cron" => match object.get("cron") {
                Some(Value::String(text)) => Ok(Schedule::Cron(CronExpr::parse(text)?)),
                Some(other) => Err(format!(
                    "cron schedule: \"cron\" must be a string, got {other}"
                )),
                None => Err("cron schedule needs a \"cron\" expression".to_string()),
            },
            other => Err(format!(
                "unknown schedule type \"{other}\" (expected \"interval\", \"hourly\", \
                 \"daily\", \"weekly\", \"monthly\" or \"cron\")"
            )),
        }
    }

    /// The first run time strictly after `after_ms` (ms since epoch, UTC). For intervals,
    /// that is `after_ms + period`. For calendar schedules (hourly/daily/weekly/monthly/cron)
    /// it is the first whole minute (seconds = 0) strictly after `after_ms` that matches.
    /// `ident` is the cron job's identifier (used only for hourly without minuteUTC).
    ///
    /// Returns `None` if `after_ms` is not finite, if no time within the next 5 years
    /// matches (e.g. cron "0 0 31 2 *"), and for calendar schedules if `after_ms` lies
    /// outside the range of a JavaScript `Date` (±8.64e15 ms).
    pub(crate) fn next_after(&self, after_ms: f64, ident: &str) -> Option<f64> {
        if !after_ms.is_finite() {
            return None;
        }
        let matcher = match self {
            Schedule::Interval { count, unit } => {
                let next = after_ms + count.saturating_mul(unit.millis()) as f64;
                return next.is_finite().then_some(next);
            }
            Schedule::Hourly { minute_utc } => {
                let minute = minute_utc.unwrap_or_else(|| stable_minute(ident));
                Matcher::at(ALL_HOURS, minute)
            }
            Schedule::Daily {
                hour_utc,
                minute_utc,
            } => Matcher::at(bit(*hour_utc), *minute_utc),
            Schedule::Weekly {
                day_of_week,
                hour_utc,
                minute_utc,
            } => Matcher {
                days_of_week: bit(*day_of_week),
                ..Matcher::at(bit(*hour_utc), *minute_utc)
            },
            Schedule::Monthly {
                day,
                hour_utc,
                minute_utc,
            } => Matcher {
                days_of_month: bit(*day),
                ..Matcher::at(bit(*hour_utc), *minute_utc)
            },
            Schedule::Cron(expr) => expr.matcher.clone(),
        };
        if after_ms.abs() > MAX_DATE_MS {
            return None;
        }
        // The first whole minute strictly after `after_ms`. In range, as checked above.
        let start_minute = (after_ms / MINUTE_MS).floor() as i64 + 1;
        matcher
            .first_at_or_after(start_minute)
            .map(|minute| minute as f64 * MINUTE_MS)
    }

    /// A short human description for logs, e.g. "every 5 seconds", "cron 0 3 * * *".
    pub(crate) fn describe(&self) -> String {
        match self {
            Schedule::Interval { count, unit } => {
                let key = unit.key();
                if *count == 1 {
                    format!("every {}", key.trim_end_matches('s'))
                } else {
                    format!("every {count} {key}")
                }
            }
            Schedule::Hourly {
                minute_utc: Some(minute),
            } => format!("hourly at minute {minute} UTC"),
            Schedule::Hourly { minute_utc: None } => {
                "hourly at a minute derived from the job name".to_string()
            }
            Schedule::Daily {
                hour_utc,
                minute_utc,
            } => format!("daily at {hour_utc:02}:{minute_utc:02} UTC"),
            Schedule::Weekly {
                day_of_week,
                hour_utc,
                minute_utc,
            } => {
                let day = WEEKDAYS.get(usize::from(*day_of_week)).unwrap_or(&"?");
                format!("weekly on {day} at {hour_utc:02}:{minute_utc:02} UTC")
            }
            Schedule::Monthly {
                day,
                hour_utc,
                minute_utc,
            } => format!("monthly on day {day} at {hour_utc:02}:{minute_utc:02} UTC"),
            Schedule::Cron(expr) => format!("cron {}", expr.text),
        }
    }
}

/// Narrows a value already checked to be small (at most 59) to `u8`.
fn small(value: u64) -> u8 {
    u8::try_from(value).unwrap_or(u8::MAX)
}

/// A single-bit mask.
fn bit(index: u8) -> u64 {
    1u64.checked_shl(u32::from(index)).unwrap_or(0)
}

/// The minute of the hour an hourly job without `minuteUTC` runs at: FNV-1a (64-bit) of
/// its identifier, modulo 60. Deterministic across runs and builds.
fn stable_minute(ident: &str) -> u8 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in ident.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    small(hash % 60)
}

fn parse_interval(object: &Map<String, Value>) -> Result<Schedule, String> {
    let present: Vec<IntervalUnit> = IntervalUnit::ALL
        .into_iter()
        .filter(|unit| object.get(unit.key()).is_some_and(|value| !value.is_null()))
        .collect();
    let [unit] = present[..] else {
        return Err(
            "interval schedule needs exactly one of \"seconds\", \"minutes\" or \"hours\""
                .to_string(),
        );
    };
    let max = MAX_PERIOD_MS / unit.millis();
    let value = object.get(unit.key()).unwrap_or(&Value::Null);
    match integer(value).filter(|count| (1.0..=max as f64).contains(count)) {
        Some(count) => Ok(Schedule::Interval {
            count: count as u64,
            unit,
        }),
        None => Err(format!(
            "interval schedule: \"{}\" must be an integer greater than 0 (at most {max}), \
             got {value}",
            unit.key()
        )),
    }
}

/// `hourUTC` (required) and `minuteUTC` (optional, 0 when absent) of a schedule.
fn hour_and_minute(object: &Map<String, Value>, kind: &str) -> Result<(u8, u8), String> {
    let hour = required_integer(object, kind, "hourUTC", 0, 23)?;
    let minute = optional_integer(object, kind, "minuteUTC", 0, 59)?.unwrap_or(0);
    Ok((small(hour), small(minute)))
}

/// The value of a JSON number that is integral (such as `5` or `5.0`).
fn integer(value: &Value) -> Option<f64> {
    let number = value.as_f64()?;
    (number.is_finite() && number.fract() == 0.0).then_some(number)
}

fn required_integer(
    object: &Map<String, Value>,
    kind: &str,
    key: &str,
    min: u64,
    max: u64,
) -> Result<u64, String> {
    optional_integer(object, kind, key, min, max)?
        .ok_or_else(|| format!("{kind} schedule needs \"{key}\" (an integer from {min} to {max})"))
}

/// An integer field in `min..=max`; absent or `null` is `None`.
fn optional_integer(
    object: &Map<String, Value>,
    kind: &str,
    key: &str,
    min: u64,
    max: u64,
) -> Result<Option<u64>, String> {
    let value = match object.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(value) => value,
    };
    match integer(value).filter(|number| (min as f64..=max as f64).contains(number)) {
        Some(number) => Ok(Some(number as u64)),
        None => Err(format!(
            "{kind} schedule: \"{key}\" must be an integer from {min} to {max}, got {value}"
        )),
    }
}

/// Which minutes match a calendar schedule. Bit `i` of a mask allows value `i`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Matcher {
    minutes: u64,
    hours: u64,
    /// Bits 1..=31.
    days_of_month: u64,
    /// Bits 1..=12.
    months: u64,
    /// Bits 0..=6, Sunday = 0.
    days_of_week: u64,
    /// Both day fields are restricted: a day matches if either of them does.
    either_day: bool,
}

impl Matcher {
    /// Every day, at the given hours, at minute `minute`.
    fn at(hours: u64, minute: u8) -> Matcher {
        Matcher {
            minutes: bit(minute),
            hours,
            days_of_month: u64::MAX,
            months: u64::MAX,
            days_of_week: u64::MAX,
            either_day: false,
        }
    }

    fn day_matches(&self, day: i64) -> bool {
        let (_, month, day_of_month) = civil_from_days(day);
        if self.months & bit(month) == 0 {
            return false;
        }
        let by_month_day = self.days_of_month & bit(day_of_month) != 0;
        let by_weekday = self.days_of_week & bit(weekday(day)) != 0;
        if self.either_day {
            by_month_day || by_weekday
        } else {
            by_month_day && by_weekday
        }
    }

    /// The first matching minute (counted from the epoch) at or after `start`, looking
    /// [`SEARCH_DAYS`] days ahead.
    fn first_at_or_after(&self, start: i64) -> Option<i64> {
        let first_day = start.div_euclid(DAY_MINUTES);
        let start_in_day = start.rem_euclid(DAY_MINUTES);
        (0..=SEARCH_DAYS).find_map(|offset| {
            let day = first_day + offset;
            if !self.day_matches(day) {
                return None;
            }
            let from = if offset == 0 { start_in_day } else { 0 };
            self.first_in_day(from)
                .map(|minute| day * DAY_MINUTES + minute)
        })
    }

    /// The first matching minute of a matching day at or after minute `from` of the day.
    fn first_in_day(&self, from: i64) -> Option<i64> {
        let (from_hour, from_minute) = (from / 60, from % 60);
        let hour = first_bit(self.hours, from_hour)?;
        if hour == from_hour {
            if let Some(minute) = first_bit(self.minutes, from_minute) {
                return Some(hour * 60 + minute);
            }
            let hour = first_bit(self.hours, from_hour + 1)?;
            return Some(hour * 60 + first_bit(self.minutes, 0)?);
        }
        Some(hour * 60 + first_bit(self.minutes, 0)?)
    }
}

/// The lowest set bit of `mask` at index `from` or above.
fn first_bit(mask: u64, from: i64) -> Option<i64> {
    let shift = u32::try_from(from).ok()?;
    let rest = mask & u64::MAX.checked_shl(shift)?;
    (rest != 0).then(|| i64::from(rest.trailing_zeros()))
}

/// One field of a cron expression.
struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    /// Names accepted for values, the first standing for `min`.
    names: &'static [&'static str],
}

const MINUTE: Field = Field {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: Field = Field {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
};
const DAY_OF_MONTH: Field = Field {
    name: "day-of-month",
    min: 1,
    max: 31,
    names: &[],
};
const MONTH: Field = Field {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
};
/// 7 is accepted as another Sunday.
const DAY_OF_WEEK: Field = Field {
    name: "day-of-week",
    min: 0,
    max: 7,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
};

impl CronExpr {
    /// Parses `minute hour day-of-month month day-of-week`.
    ///
    /// As in Vixie cron, a day field counts as unrestricted when it starts with `*` (so
    /// `*` and `*/n`); when both day fields are restricted, a day matching either runs.
    fn parse(text: &str) -> Result<CronExpr, String> {
        let fail = |detail: String| format!("cron expression \"{text}\": {detail}");
        let fields: Vec<&str> = text.split_whitespace().collect();
        let [minute, hour, day_of_month, month, day_of_week] = fields[..] else {
            return Err(fail(format!(
                "expected 5 fields (minute hour day-of-month month day-of-week), found {}",
                fields.len()
            )));
        };
        let mut days_of_week = parse_field(day_of_week, &DAY_OF_WEEK).map_err(fail)?;
        if days_of_week & bit(7) != 0 {
            days_of_week = (days_of_week & !bit(7)) | bit(0);
        }
        let matcher = Matcher {
            minutes: parse_field(minute, &MINUTE).map_err(fail)?,
            hours: parse_field(hour, &HOUR).map_err(fail)?,
            days_of_month: parse_field(day_of_month, &DAY_OF_MONTH).map_err(fail)?,
            months: parse_field(month, &MONTH).map_err(fail)?,
            days_of_week,
            either_day: !day_of_month.starts_with('*') && !day_of_week.starts_with('*'),
        };
        Ok(CronExpr {
            text: fields.join(" "),
            matcher,
        })
    }
}

/// The mask of values one cron field allows: a comma list of `*`, `v`, `a-b`, each
/// optionally followed by `/step` (`v/step` meaning `v` to the field's maximum).
fn parse_field(text: &str, field: &Field) -> Result<u64, String> {
    let name = field.name;
    let mut mask = 0u64;
    for item in text.split(',') {
        if item.is_empty() {
            return Err(format!("{name} list \"{text}\" has an empty item"));
        }
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => (range, Some(step)),
            None => (item, None),
        };
        let (low, high) = if range == "*" {
            (field.min, field.max)
        } else if let Some((low, high)) = range.split_once('-') {
            let (low, high) = (parse_value(low, field)?, parse_value(high, field)?);
            if low > high {
                return Err(format!("{name} range {range} goes backwards"));
            }
            (low, high)
        } else {
            let value = parse_value(range, field)?;
            (value, if step.is_some() { field.max } else { value })
        };
        let step = match step {
            None => 1,
            Some(step) => match parse_number(step) {
                Some(0) => return Err(format!("{name} step in \"{item}\" must not be 0")),
                Some(step) => step,
                None => {
                    return Err(format!(
                        "{name} step \"{step}\" in \"{item}\" is not a number"
                    ))
                }
            },
        };
        let mut value = low;
        while value <= high {
            mask |= 1u64 << value;
            value = match value.checked_add(step) {
                Some(next) => next,
                None => break,
            };
        }
    }
    Ok(mask)
}

/// A decimal number of ASCII digits only (`u32::MAX` when too long to hold).
fn parse_number(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    Some(text.parse().unwrap_or(u32::MAX))
}

/// A number or (for months and weekdays) a three-letter name, within the field's range.
fn parse_value(text: &str, field: &Field) -> Result<u32, String> {
    let name = field.name;
    if let Some(number) = parse_number(text) {
        if (field.min..=field.max).contains(&number) {
            return Ok(number);
        }
        return Err(format!(
            "{name} {text} is out of range {}-{}",
            field.min, field.max
        ));
    }
    let by_name = field
        .names
        .iter()
        .zip(field.min..)
        .find(|(candidate, _)| candidate.eq_ignore_ascii_case(text));
    match by_name {
        Some((_, value)) => Ok(value),
        None if field.names.is_empty() => Err(format!("{name} \"{text}\" is not a number")),
        None => Err(format!(
            "{name} \"{text}\" is not a number or a {name} name"
        )),
    }
}

/// Days since 1970-01-01 of a date of the proleptic Gregorian calendar: the inverse of
/// [`civil_from_days`], used by the tests to write dates.
///
/// Years are counted from March, so the leap day ends a year; 400-year eras repeat exactly.
#[cfg(test)]
fn days_from_civil(year: i64, month: u8, day: u8) -> i64 {
    let (month, day) = (i64::from(month), i64::from(day));
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    // Months since March: March = 0 … February = 11.
    let shifted_month = (month + 9) % 12;
    let day_of_year = (153 * shifted_month + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    // 719468 days lie between 0000-03-01 and 1970-01-01.
    era * 146_097 + day_of_era - 719_468
}

/// The (year, month 1..=12, day 1..=31) of a day counted from 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u8, u8) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = era * 400 + year_of_era + i64::from(month <= 2);
    (year, small(month as u64), small(day as u64))
}

/// The weekday of a day counted from 1970-01-01, Sunday = 0. That day was a Thursday.
fn weekday(days: i64) -> u8 {
    small((days + 4).rem_euclid(7) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Milliseconds of a UTC date and time, by this module's calendar functions.
    fn ms(year: i64, month: u8, day: u8, hour: i64, minute: i64) -> f64 {
        ((days_from_civil(year, month, day) * 24 + hour) * 60 + minute) as f64 * MINUTE_MS
    }

    fn parse(json: Value) -> Schedule {
        match Schedule::parse(&json) {
            Ok(schedule) => schedule,
            Err(error) => panic!("{json} should parse: {error}"),
        }
    }

    fn parse_error(json: Value) -> String {
        match Schedule::parse(&json) {
            Ok(schedule) => panic!("{json} should not parse, got {schedule:?}"),
            Err(error) => error,
        }
    }

    fn cron(text: &str) -> Schedule {
        parse(json!({"type": "cron", "cron": text}))
    }

    fn matcher(text: &str) -> Matcher {
        match cron(text) {
            Schedule::Cron(expr) => expr.matcher,
            other => panic!("{text} parsed as {other:?}"),
        }
    }

    fn cron_error(text: &str) -> String {
        parse_error(json!({"type": "cron", "cron": text}))
    }

    fn next(schedule: &Schedule, after: f64) -> f64 {
        match schedule.next_after(after, "job") {
            Some(next) => next,
            None => panic!("{schedule:?} should run after {after}"),
        }
    }

    /// Day numbers by counting whole years and months from 1970, independently of the
    /// era arithmetic above.
    fn naive_days(year: i64, month: u8, day: u8) -> i64 {
        let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        let mut days = 0;
        for y in 1970..year {
            days += if leap(y) { 366 } else { 365 };
        }
        let lengths = [
            31,
            if leap(year) { 29 } else { 28 },
            31,
            30,
            31,
            30,
            31,
            31,
            30,
            31,
            30,
            31,
        ];
        days += lengths[..usize::from(month - 1)].iter().sum::<i64>();
        days + i64::from(day) - 1
    }

    #[test]
    fn calendar_anchors() {
        // Independently known: 2000-01-01T00:00:00Z is 946684800000 ms, a Saturday;
        // the epoch was a Thursday.
        assert_eq!(ms(2000, 1, 1, 0, 0), 946_684_800_000.0);
        assert_eq!(weekday(days_from_civil(2000, 1, 1)), 6);
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(weekday(0), 4);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        // 2026-12-03T07:49:00Z, a Thursday.
        assert_eq!(ms(2026, 12, 3, 7, 49), 1_796_284_140_000.0);
        assert_eq!(
            1_796_284_140_000.0 - 946_684_800_000.0,
            ((9_833 * 24 + 7) * 60 + 49) as f64 * MINUTE_MS
        );
        assert_eq!(weekday(days_from_civil(2026, 12, 3)), 4);
        assert_eq!(ms(2028, 2, 29, 0, 0), 1_835_395_200_000.0);
    }

    #[test]
    fn calendar_round_trips_against_naive_counting() {
        for year in 1970..2110 {
            for month in 1..=12u8 {
                for day in [1u8, 15, 28] {
                    let days = days_from_civil(year, month, day);
                    assert_eq!(days, naive_days(year, month, day), "{year}-{month}-{day}");
                    assert_eq!(civil_from_days(days), (year, month, day));
                }
            }
        }
        for days in -800_000..800_000 {
            let (year, month, day) = civil_from_days(days);
            assert_eq!(days_from_civil(year, month, day), days);
        }
        assert_eq!(
            civil_from_days(days_from_civil(2100, 3, 1) - 1),
            (2100, 2, 28)
        );
        assert_eq!(
            civil_from_days(days_from_civil(2000, 3, 1) - 1),
            (2000, 2, 29)
        );
    }

    #[test]
    fn intervals() {
        let after = ms(2026, 12, 3, 7, 49) + 123.0;
        for (json, period, description) in [
            (
                json!({"type": "interval", "seconds": 5}),
                5_000.0,
                "every 5 seconds",
            ),
            (
                json!({"type": "interval", "seconds": 1}),
                1_000.0,
                "every second",
            ),
            (
                json!({"type": "interval", "minutes": 2}),
                120_000.0,
                "every 2 minutes",
            ),
            (
                json!({"type": "interval", "hours": 3.0}),
                10_800_000.0,
                "every 3 hours",
            ),
            (
                json!({"type": "interval", "hours": 1, "minutes": null, "extra": true}),
                3_600_000.0,
                "every hour",
            ),
        ] {
            let schedule = parse(json);
            assert_eq!(next(&schedule, after), after + period);
            assert_eq!(next(&schedule, -1_000.0), -1_000.0 + period);
            assert_eq!(schedule.describe(), description);
        }
        assert_eq!(
            parse(json!({"type": "interval", "minutes": 7})),
            Schedule::Interval {
                count: 7,
                unit: IntervalUnit::Minutes
            }
        );
    }

    #[test]
    fn interval_errors() {
        let exactly_one =
            "interval schedule needs exactly one of \"seconds\", \"minutes\" or \"hours\"";
        assert_eq!(parse_error(json!({"type": "interval"})), exactly_one);
        assert_eq!(
            parse_error(json!({"type": "interval", "seconds": 1, "minutes": 1})),
            exactly_one
        );
        for bad in [json!(0), json!(-5), json!(1.5), json!("5"), json!(1e300)] {
            let error = parse_error(json!({"type": "interval", "seconds": bad}));
            assert!(
                error.contains("\"seconds\" must be an integer greater than 0"),
                "{error}"
            );
        }
    }

    #[test]
    fn hourly() {
        let schedule = parse(json!({"type": "hourly", "minuteUTC": 15}));
        assert_eq!(schedule.describe(), "hourly at minute 15 UTC");
        assert_eq!(
            next(&schedule, ms(2026, 12, 3, 7, 49)),
            ms(2026, 12, 3, 8, 15)
        );
        assert_eq!(
            next(&schedule, ms(2026, 12, 3, 7, 14)),
            ms(2026, 12, 3, 7, 15)
        );
        // Exactly on a run time: the next one.
        assert_eq!(
            next(&schedule, ms(2026, 12, 3, 7, 15)),
            ms(2026, 12, 3, 8, 15)
        );
        assert_eq!(
            next(&schedule, ms(2026, 12, 31, 23, 30)),
            ms(2027, 1, 1, 0, 15)
        );
        for bad in [json!(60), json!(-1), json!(1.5), json!("7")] {
            let error = parse_error(json!({"type": "hourly", "minuteUTC": bad}));
            assert!(
                error.contains("\"minuteUTC\" must be an integer from 0 to 59"),
                "{error}"
            );
        }
    }

    #[test]
    fn hourly_without_minute_is_stable_per_identifier() {
        let schedule = parse(json!({"type": "hourly"}));
        assert_eq!(schedule, Schedule::Hourly { minute_utc: None });
        let after = ms(2026, 12, 3, 7, 49);
        let mut minutes = std::collections::BTreeSet::new();
        for ident in ["cleanup", "send emails", "job", "", "a", "b", "c", "d"] {
            let minute = stable_minute(ident);
            assert!(minute <= 59);
            assert_eq!(stable_minute(ident), minute);
            minutes.insert(minute);
            let first = schedule.next_after(after, ident);
            assert_eq!(first, schedule.next_after(after, ident));
            let Some(first) = first else {
                panic!("hourly must run");
            };
            assert!(first > after && first <= after + 3_600_000.0);
            assert_eq!((first / MINUTE_MS).rem_euclid(60.0), f64::from(minute));
            assert_eq!(schedule.next_after(first, ident), Some(first + 3_600_000.0));
        }
        assert!(minutes.len() > 1, "identifiers should spread over minutes");
        // FNV-1a of the empty string is its offset basis, 14695981039346656037.
        assert_eq!(stable_minute(""), small(14_695_981_039_346_656_037 % 60));
    }

    #[test]
    fn daily() {
        let schedule = parse(json!({"type": "daily", "hourUTC": 7, "minuteUTC": 49}));
        assert_eq!(schedule.describe(), "daily at 07:49 UTC");
        let at = ms(2026, 12, 3, 7, 49);
        assert_eq!(next(&schedule, at - 1.0), at);
        assert_eq!(next(&schedule, at), ms(2026, 12, 4, 7, 49));
        assert_eq!(next(&schedule, at + 59_999.0), ms(2026, 12, 4, 7, 49));
        assert_eq!(
            next(&schedule, ms(2026, 12, 3, 8, 0)),
            ms(2026, 12, 4, 7, 49)
        );
        assert_eq!(next(&schedule, ms(2026, 12, 3, 6, 59)), at);

        let midnight = parse(json!({"type": "daily", "hourUTC": 0}));
        assert_eq!(
            midnight,
            Schedule::Daily {
                hour_utc: 0,
                minute_utc: 0
            }
        );
        assert_eq!(
            next(&midnight, ms(2026, 12, 31, 23, 59)),
            ms(2027, 1, 1, 0, 0)
        );
        // Before the epoch.
        assert_eq!(next(&midnight, -1.0), 0.0);
        assert_eq!(next(&midnight, -86_400_000.0), 0.0);
        assert_eq!(next(&midnight, -86_400_001.0), -86_400_000.0);

        assert!(parse_error(json!({"type": "daily"})).contains("needs \"hourUTC\""));
        assert!(parse_error(json!({"type": "daily", "hourUTC": 24}))
            .contains("\"hourUTC\" must be an integer from 0 to 23"));
        assert!(
            parse_error(json!({"type": "daily", "hourUTC": 3, "minuteUTC": 60}))
                .contains("\"minuteUTC\" must be an integer from 0 to 59")
        );
    }

    #[test]
    fn weekly() {
        let schedule = parse(json!({
            "type": "weekly", "dayOfWeek": "monday", "hourUTC": 9, "minuteUTC": 30
        }));
        assert_eq!(schedule.describe(), "weekly on monday at 09:30 UTC");
        // Thursday 2026-12-03 → Monday 2026-12-07.
        assert_eq!(
            next(&schedule, ms(2026, 12, 3, 7, 49)),
            ms(2026, 12, 7, 9, 30)
        );
        assert_eq!(
            next(&schedule, ms(2026, 12, 7, 9, 30)),
            ms(2026, 12, 14, 9, 30)
        );
        assert_eq!(
            next(&schedule, ms(2026, 12, 7, 9, 29)),
            ms(2026, 12, 7, 9, 30)
        );

        let sunday = parse(json!({"type": "weekly", "dayOfWeek": "SUNDAY", "hourUTC": 0}));
        assert_eq!(
            sunday,
            Schedule::Weekly {
                day_of_week: 0,
                hour_utc: 0,
                minute_utc: 0
            }
        );
        assert_eq!(next(&sunday, ms(2026, 12, 3, 7, 49)), ms(2026, 12, 6, 0, 0));
        // Across the epoch: 1970-01-04 was the first Sunday.
        assert_eq!(next(&sunday, -1.0), ms(1970, 1, 4, 0, 0));

        for bad in [json!("funday"), json!(1), json!(null)] {
            let error = parse_error(json!({"type": "weekly", "dayOfWeek": bad, "hourUTC": 1}));
            assert!(
                error.contains("\"dayOfWeek\" must be a day name"),
                "{error}"
            );
        }
        assert!(
            parse_error(json!({"type": "weekly", "dayOfWeek": "monday"}))
                .contains("needs \"hourUTC\"")
        );
    }

    #[test]
    fn monthly_skips_months_without_the_day() {
        let last = parse(json!({"type": "monthly", "day": 31, "hourUTC": 10}));
        assert_eq!(last.describe(), "monthly on day 31 at 10:00 UTC");
        // April has 30 days.
        assert_eq!(next(&last, ms(2026, 4, 1, 0, 0)), ms(2026, 5, 31, 10, 0));
        // After January 31st's run: not February, March 31st.
        assert_eq!(next(&last, ms(2026, 1, 31, 12, 0)), ms(2026, 3, 31, 10, 0));
        assert_eq!(next(&last, ms(2026, 1, 31, 10, 0)), ms(2026, 3, 31, 10, 0));
        assert_eq!(next(&last, ms(2026, 1, 31, 9, 59)), ms(2026, 1, 31, 10, 0));
        assert_eq!(next(&last, ms(2026, 12, 3, 7, 49)), ms(2026, 12, 31, 10, 0));

        let thirtieth = parse(json!({"type": "monthly", "day": 30, "hourUTC": 0, "minuteUTC": 5}));
        assert_eq!(
            next(&thirtieth, ms(2028, 1, 30, 1, 0)),
            ms(2028, 3, 30, 0, 5)
        );

        let leap_day = parse(json!({"type": "monthly", "day": 29, "hourUTC": 0}));
        assert_eq!(
            next(&leap_day, ms(2027, 1, 29, 1, 0)),
            ms(2027, 3, 29, 0, 0)
        );
        assert_eq!(
            next(&leap_day, ms(2028, 1, 29, 1, 0)),
            ms(2028, 2, 29, 0, 0)
        );

        for bad in [json!(0), json!(32), json!(15.5)] {
            let error = parse_error(json!({"type": "monthly", "day": bad, "hourUTC": 1}));
            assert!(
                error.contains("\"day\" must be an integer from 1 to 31"),
                "{error}"
            );
        }
        assert!(parse_error(json!({"type": "monthly", "hourUTC": 1})).contains("needs \"day\""));
    }

    #[test]
    fn cron_basics_and_steps() {
        let nightly = cron("0 3 * * *");
        assert_eq!(nightly.describe(), "cron 0 3 * * *");
        assert_eq!(
            next(&nightly, ms(2026, 12, 3, 7, 49)),
            ms(2026, 12, 4, 3, 0)
        );
        assert_eq!(cron("  0   3 * *\t* ").describe(), "cron 0 3 * * *");

        let quarter = cron("*/15 * * * *");
        assert_eq!(
            next(&quarter, ms(2026, 12, 3, 7, 49)),
            ms(2026, 12, 3, 8, 0)
        );
        assert_eq!(
            next(&quarter, ms(2026, 12, 3, 8, 0)),
            ms(2026, 12, 3, 8, 15)
        );
        assert_eq!(
            next(&quarter, ms(2026, 12, 3, 8, 14) + 30_000.0),
            ms(2026, 12, 3, 8, 15)
        );
        assert_eq!(
            next(&quarter, ms(2026, 12, 31, 23, 45)),
            ms(2027, 1, 1, 0, 0)
        );

        let every_minute = cron("* * * * *");
        let after = ms(2026, 12, 3, 7, 49);
        assert_eq!(next(&every_minute, after), after + MINUTE_MS);
        assert_eq!(next(&every_minute, after + 1.0), after + MINUTE_MS);
        assert_eq!(next(&every_minute, after - 1.0), after);

        // `a/n` runs from a to the maximum; `a-b/n` within the range; lists combine.
        let tail = cron("50/5 * * * *");
        assert_eq!(next(&tail, ms(2026, 12, 3, 7, 49)), ms(2026, 12, 3, 7, 50));
        assert_eq!(next(&tail, ms(2026, 12, 3, 7, 55)), ms(2026, 12, 3, 8, 50));
        let ranged = cron("10-20/5,45 9-17/4 * * *");
        assert_eq!(
            next(&ranged, ms(2026, 12, 3, 7, 49)),
            ms(2026, 12, 3, 9, 10)
        );
        assert_eq!(
            next(&ranged, ms(2026, 12, 3, 9, 20)),
            ms(2026, 12, 3, 9, 45)
        );
        assert_eq!(
            next(&ranged, ms(2026, 12, 3, 9, 45)),
            ms(2026, 12, 3, 13, 10)
        );
        assert_eq!(
            next(&ranged, ms(2026, 12, 3, 17, 45)),
            ms(2026, 12, 4, 9, 10)
        );
        // A step larger than the range: just its start.
        let sparse = cron("0 0 1 */12 *");
        assert_eq!(next(&sparse, ms(2026, 12, 3, 7, 49)), ms(2027, 1, 1, 0, 0));
        assert_eq!(next(&sparse, ms(2027, 1, 1, 0, 0)), ms(2028, 1, 1, 0, 0));
    }

    #[test]
    fn cron_names_and_sunday_seven() {
        // Weekdays at 09:00 in January and July. 2026-12-03 → Friday 2027-01-01.
        let schedule = cron("0 9 * JAN,jul Mon-FRI");
        assert_eq!(
            next(&schedule, ms(2026, 12, 3, 7, 49)),
            ms(2027, 1, 1, 9, 0)
        );
        // 2027-01-02/03 are a weekend.
        assert_eq!(next(&schedule, ms(2027, 1, 1, 9, 0)), ms(2027, 1, 4, 9, 0));
        assert_eq!(next(&schedule, ms(2027, 1, 29, 9, 0)), ms(2027, 7, 1, 9, 0));
        assert_eq!(matcher("0 9 * jan-mar *"), matcher("0 9 * 1-3 *"));
        assert_eq!(matcher("0 9 * * Sun,TUE"), matcher("0 9 * * 0,2"));
        assert_eq!(
            next(&cron("0 0 * * sat,sun"), ms(2026, 12, 3, 7, 49)),
            ms(2026, 12, 5, 0, 0)
        );

        let sunday = ms(2026, 12, 6, 0, 0);
        for text in ["0 0 * * 0", "0 0 * * 7", "0 0 * * sun", "0 0 * * 6-7"] {
            assert_eq!(next(&cron(text), ms(2026, 12, 5, 12, 0)), sunday, "{text}");
        }
        assert_eq!(cron("0 0 * * 7").describe(), "cron 0 0 * * 7");
    }

    #[test]
    fn cron_day_of_month_or_day_of_week() {
        // Both restricted: the 13th OR any Friday. Thursday 2026-12-03 → Friday 12-04.
        let either = cron("0 0 13 * 5");
        assert_eq!(next(&either, ms(2026, 12, 3, 7, 49)), ms(2026, 12, 4, 0, 0));
        assert_eq!(
            next(&either, ms(2026, 12, 11, 0, 0)),
            ms(2026, 12, 13, 0, 0)
        );
        let monday_or_13th = cron("0 0 13 * mon");
        assert_eq!(
            next(&monday_or_13th, ms(2026, 12, 8, 0, 0)),
            ms(2026, 12, 13, 0, 0)
        );
        assert_eq!(
            next(&monday_or_13th, ms(2026, 12, 13, 0, 0)),
            ms(2026, 12, 14, 0, 0)
        );

        // Only one restricted: that one decides.
        assert_eq!(
            next(&cron("0 0 13 * *"), ms(2026, 12, 3, 7, 49)),
            ms(2026, 12, 13, 0, 0)
        );
        assert_eq!(
            next(&cron("0 0 * * 5"), ms(2026, 12, 3, 7, 49)),
            ms(2026, 12, 4, 0, 0)
        );
        // A field starting with `*` counts as unrestricted: odd days that are Mondays.
        // 2026-12-07 is an odd Monday.
        assert_eq!(
            next(&cron("0 0 */2 * 1"), ms(2026, 12, 3, 7, 49)),
            ms(2026, 12, 7, 0, 0)
        );
        assert_eq!(
            next(&cron("0 0 */2 * 1"), ms(2026, 12, 7, 0, 0)),
            ms(2026, 12, 21, 0, 0)
        );
        // With the month too: Friday the 13th of March 2026 from January.
        assert_eq!(
            next(&cron("0 0 13 3 5"), ms(2026, 1, 1, 0, 0)),
            ms(2026, 3, 6, 0, 0)
        );
    }

    #[test]
    fn cron_impossible_and_rare_dates() {
        assert_eq!(
            cron("0 0 31 2 *").next_after(ms(2026, 1, 1, 0, 0), "job"),
            None
        );
        assert_eq!(cron("0 0 30 2 *").next_after(0.0, "job"), None);
        assert_eq!(
            next(&cron("0 0 29 2 *"), ms(2026, 12, 3, 7, 49)),
            ms(2028, 2, 29, 0, 0)
        );
        // 2100 is not a leap year: 2096-02-29 is followed by 2104-02-29, beyond 5 years.
        assert_eq!(
            cron("0 0 29 2 *").next_after(ms(2096, 3, 1, 0, 0), "job"),
            None
        );
        assert_eq!(
            next(&cron("59 23 31 12 *"), ms(2026, 12, 31, 23, 59)),
            ms(2027, 12, 31, 23, 59)
        );
    }

    #[test]
    fn cron_errors_name_the_field() {
        assert_eq!(
            cron_error("61 * * * *"),
            "cron expression \"61 * * * *\": minute 61 is out of range 0-59"
        );
        for (text, expected) in [
            ("* * * *", "expected 5 fields"),
            ("* * * * * *", "found 6"),
            ("", "found 0"),
            ("* 24 * * *", "hour 24 is out of range 0-23"),
            ("* * 0 * *", "day-of-month 0 is out of range 1-31"),
            ("* * 32 * *", "day-of-month 32 is out of range 1-31"),
            ("* * * 13 *", "month 13 is out of range 1-12"),
            ("* * * 0 *", "month 0 is out of range 1-12"),
            ("* * * * 8", "day-of-week 8 is out of range 0-7"),
            (
                "99999999999 * * * *",
                "minute 99999999999 is out of range 0-59",
            ),
            ("*/0 * * * *", "minute step in \"*/0\" must not be 0"),
            ("* 1-5/0 * * *", "hour step in \"1-5/0\" must not be 0"),
            (
                "* * * * */x",
                "day-of-week step \"x\" in \"*/x\" is not a number",
            ),
            ("* */ * * *", "hour step \"\" in \"*/\" is not a number"),
            ("30-10 * * * *", "minute range 30-10 goes backwards"),
            (
                "* * * * fri-mon",
                "day-of-week range fri-mon goes backwards",
            ),
            ("1,,2 * * * *", "minute list \"1,,2\" has an empty item"),
            ("* 1, * * *", "hour list \"1,\" has an empty item"),
            ("abc * * * *", "minute \"abc\" is not a number"),
            (
                "* * * foo *",
                "month \"foo\" is not a number or a month name",
            ),
            (
                "* * * * funday",
                "day-of-week \"funday\" is not a number or a day-of-week name",
            ),
            ("* * jan * *", "day-of-month \"jan\" is not a number"),
            ("-1 * * * *", "minute \"\" is not a number"),
            ("1-2-3 * * * *", "minute \"2-3\" is not a number"),
            ("** * * * *", "minute \"**\" is not a number"),
            ("+5 * * * *", "minute \"+5\" is not a number"),
        ] {
            let error = cron_error(text);
            assert!(
                error.starts_with(&format!("cron expression \"{text}\": ")),
                "{error}"
            );
            assert!(error.contains(expected), "{text}: {error}");
        }
        assert!(parse_error(json!({"type": "cron"})).contains("needs a \"cron\""));
        assert!(parse_error(json!({"type": "cron", "cron": 5})).contains("must be a string"));
    }

    #[test]
    fn schedule_object_errors() {
        assert!(parse_error(json!("daily")).contains("must be a JSON object"));
        assert!(parse_error(json!({"hourUTC": 1})).contains("needs a \"type\""));
        assert!(parse_error(json!({"type": 3})).contains("\"type\" must be a string"));
        let error = parse_error(json!({"type": "yearly"}));
        assert!(
            error.contains("unknown schedule type \"yearly\""),
            "{error}"
        );
    }

    #[test]
    fn next_after_edge_inputs() {
        let schedules = [
            parse(json!({"type": "interval", "seconds": 5})),
            parse(json!({"type": "hourly"})),
            parse(json!({"type": "daily", "hourUTC": 1})),
            cron("*/15 * * * *"),
        ];
        for schedule in &schedules {
            for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
                assert_eq!(schedule.next_after(bad, "job"), None, "{schedule:?}");
            }
        }
        // Calendar schedules outside the JavaScript date range.
        assert_eq!(schedules[3].next_after(1e300, "job"), None);
        assert_eq!(schedules[3].next_after(-1e300, "job"), None);
        // Negative times before a matching minute.
        assert_eq!(next(&schedules[3], -1.0), 0.0);
        assert_eq!(next(&schedules[3], -900_000.0), 0.0);
        assert_eq!(next(&schedules[3], -900_001.0), -900_000.0);
        // Exact matches are skipped; fractions of a millisecond count.
        let at = ms(2026, 12, 3, 8, 0);
        assert_eq!(next(&schedules[3], at), at + 900_000.0);
        assert_eq!(next(&schedules[3], at - 0.5), at);
    }
}
