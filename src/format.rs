//! How numbers read in messages and tables: learning rates and durations.

/// A learning rate for messages: plain decimals between 1e-4 and 1e4, else scientific
/// (`0.0025`, `20`, `1e30`).
pub fn format_rate(lr: f64) -> String {
    if lr != 0.0 && !(1e-4..1e4).contains(&lr.abs()) {
        format!("{lr:e}")
    } else {
        format!("{lr}")
    }
}

/// `h:mm:ss` for a duration in seconds.
pub fn format_duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_print_short() {
        assert_eq!(format_rate(0.0025), "0.0025");
        assert_eq!(format_rate(20.0), "20");
        assert_eq!(format_rate(1e30), "1e30");
        assert_eq!(format_rate(5e-6), "5e-6");
    }

    #[test]
    fn durations_print_as_hours_minutes_seconds() {
        assert_eq!(format_duration(3725.4), "1:02:05");
        assert_eq!(format_duration(-3.0), "0:00:00");
    }
}
