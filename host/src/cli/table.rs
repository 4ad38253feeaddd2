//! Plain-text tables and timestamps for people.

use durable_host::store::Millis;

/// Characters a table cell shows at most; longer ones (a huge id or step
/// name, say) are cut with `…`. `--json` gives the full values.
pub const MAX_CELL_CHARS: usize = 80;

/// Columns padded to their widest cell; the last column is not padded.
/// Cells are cut to [`MAX_CELL_CHARS`], so a table stays readable and never
/// fails, whatever the database holds.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let cut = |cell: &str| preview(cell, MAX_CELL_CHARS);
    let header: Vec<String> = header.iter().map(|h| cut(h)).collect();
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|cell| cut(cell)).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    // Padding by hand: a runtime format width (`{:<w$}`) panics past 65,535.
    let line = |cells: &[String]| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            out.push_str(cell);
            if i + 1 < widths.len() {
                let pad = widths[i].saturating_sub(cell.chars().count()) + 2;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
        out
    };
    let mut out = line(&header);
    for row in &rows {
        out.push_str(&line(row));
    }
    out
}

/// `2026-11-24 09:30:05` (UTC) for a time in milliseconds since the epoch.
pub fn timestamp(millis: Millis) -> String {
    let seconds = millis.div_euclid(1000);
    let (days, second_of_day) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60
    )
}

/// `2026-11-24T09:30:05Z` (RFC 3339, UTC), for JSON.
pub fn rfc3339(millis: Millis) -> String {
    let mut text = timestamp(millis).replacen(' ', "T", 1);
    text.push('Z');
    text
}

/// Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `text` cut to `max` characters, with an ellipsis when cut.
pub fn preview(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_dates() {
        assert_eq!(timestamp(0), "1970-01-01 00:00:00");
        assert_eq!(timestamp(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(timestamp(1_795_487_899_033), "2026-11-24 02:38:19");
        assert_eq!(rfc3339(1_795_487_899_033), "2026-11-24T02:38:19Z");
    }

    #[test]
    fn tables_align_columns() {
        let table = render(&["id", "status"], &[vec!["a-long-id".into(), "ok".into()]]);
        assert_eq!(table, "id         status\na-long-id  ok\n");
    }

    #[test]
    fn huge_cells_are_cut_without_panicking() {
        // Wider than a format width may be (65,535), as an id in a database can be.
        let huge = "x".repeat(70_000);
        let table = render(
            &["id", "status", "notes"],
            &[
                vec![huge.clone(), "running".into(), huge.clone()],
                vec!["short".into(), "ok".into(), String::new()],
            ],
        );
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        let cut = format!("{}…", "x".repeat(MAX_CELL_CHARS - 1));
        assert_eq!(lines[1], format!("{cut}  running  {cut}"));
        // Columns still line up after the cut.
        assert_eq!(lines[0], format!("id{}  status   notes", " ".repeat(78)));
        assert_eq!(lines[2], format!("short{}  ok", " ".repeat(75)));
    }

    #[test]
    fn cells_are_counted_in_characters() {
        let table = render(&["a", "b"], &[vec!["é…".into(), "x".into()]]);
        assert_eq!(table, "a   b\né…  x\n");
    }

    #[test]
    fn previews_are_cut() {
        assert_eq!(preview("abcdef", 4), "abc…");
        assert_eq!(preview("abc", 4), "abc");
    }
}
