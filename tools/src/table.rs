//! Plain-text tables: columns padded to their widest cell.

/// Rows of cells under a header. The first `left` columns (names) are
/// left-aligned, the others (numbers) right-aligned.
#[derive(Debug)]
pub struct Table {
    rows: Vec<Vec<String>>,
    left: usize,
}

impl Table {
    pub fn new(header: &[&str], left: usize) -> Self {
        Self { rows: vec![header.iter().map(|h| (*h).to_owned()).collect()], left }
    }

    pub fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    /// The header line, then one line per row, in order.
    pub fn lines(&self) -> Vec<String> {
        let mut widths = Vec::new();
        for row in &self.rows {
            widths.resize(widths.len().max(row.len()), 0);
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        self.rows
            .iter()
            .map(|row| {
                let cells: Vec<String> = row
                    .iter()
                    .zip(&widths)
                    .enumerate()
                    .map(
                        |(i, (cell, &w))| {
                            if i < self.left { format!("{cell:<w$}") } else { format!("{cell:>w$}") }
                        },
                    )
                    .collect();
                cells.join("  ").trim_end().to_owned()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_left_numbers_right() {
        let mut table = Table::new(&["NAME", "N"], 1);
        table.push(vec!["a".into(), "1000".into()]);
        table.push(vec!["long name".into(), "7".into()]);
        assert_eq!(table.lines(), ["NAME          N", "a          1000", "long name     7"]);
    }
}
