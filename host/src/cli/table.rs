//! Plain-text tables and timestamps for people.

use durable_host::api::model::rfc3339;
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
    let mut text = rfc3339(millis).replacen('T', " ", 1);
    text.pop(); // the `Z`: tables say UTC in their headers
    text
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
