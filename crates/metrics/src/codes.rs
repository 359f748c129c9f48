//! Requests counted by request code and response code in a matrix fixed at start-up.

use std::sync::atomic::{AtomicU64, Ordering};

/// The label value of codes outside the known lists.
pub const OTHER_CODE: &str = "OTHER";

/// A `requests × responses` matrix of counters. The code lists are given once (code, name); a lookup is a
/// binary search, and codes not in a list share its `OTHER` row or column, so the series are bounded by
/// the product of the two lists whatever clients send.
#[derive(Debug)]
pub struct CodeMatrix {
    /// Known request codes, sorted; row `requests.len()` is `OTHER`.
    requests: Vec<(i32, &'static str)>,
    /// Known response codes, sorted; column `responses.len()` is `OTHER`.
    responses: Vec<(i32, &'static str)>,
    cells: Box<[AtomicU64]>,
}

fn index_of(list: &[(i32, &'static str)], code: i32) -> usize {
    list.binary_search_by_key(&code, |(c, _)| *c).unwrap_or(list.len())
}

impl CodeMatrix {
    /// A matrix over the given request and response codes (duplicates are dropped).
    pub fn new(
        requests: impl IntoIterator<Item = (i32, &'static str)>,
        responses: impl IntoIterator<Item = (i32, &'static str)>,
    ) -> CodeMatrix {
        let sorted = |it: &mut dyn Iterator<Item = (i32, &'static str)>| {
            let mut v: Vec<(i32, &'static str)> = it.collect();
            v.sort_unstable_by_key(|(c, _)| *c);
            v.dedup_by_key(|(c, _)| *c);
            v
        };
        let requests = sorted(&mut requests.into_iter());
        let responses = sorted(&mut responses.into_iter());
        let n = (requests.len() + 1) * (responses.len() + 1);
        CodeMatrix { cells: (0..n).map(|_| AtomicU64::new(0)).collect(), requests, responses }
    }

    /// The row of a request code, to count several responses of one request without searching again.
    #[inline]
    pub fn row(&self, request: i32) -> usize {
        index_of(&self.requests, request)
    }

    /// Counts one `request` answered with `response`.
    #[inline]
    pub fn count(&self, request: i32, response: i32) {
        self.count_row(self.row(request), response);
    }

    /// Counts one request of row `row` (from [`CodeMatrix::row`]) answered with `response`.
    #[inline]
    pub fn count_row(&self, row: usize, response: i32) {
        let col = index_of(&self.responses, response);
        self.cells[row * (self.responses.len() + 1) + col].fetch_add(1, Ordering::Relaxed);
    }

    /// The counters that are not zero: `(request name, response name, count)`.
    pub fn snapshot(&self) -> Vec<(&'static str, &'static str, u64)> {
        let name = |list: &[(i32, &'static str)], i: usize| list.get(i).map(|(_, n)| *n).unwrap_or(OTHER_CODE);
        let cols = self.responses.len() + 1;
        self.cells
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let v = c.load(Ordering::Relaxed);
                (v != 0).then(|| (name(&self.requests, i / cols), name(&self.responses, i % cols), v))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_codes_are_counted_under_other() {
        let m = CodeMatrix::new([(11, "PULL_MESSAGE"), (10, "SEND_MESSAGE")], [(0, "SUCCESS"), (1, "SYSTEM_ERROR")]);
        m.count(10, 0);
        m.count(10, 0);
        m.count(11, 1);
        m.count(9999, 0);
        m.count(10, 4242);
        let mut s = m.snapshot();
        s.sort();
        assert_eq!(
            s,
            vec![
                ("OTHER", "SUCCESS", 1),
                ("PULL_MESSAGE", "SYSTEM_ERROR", 1),
                ("SEND_MESSAGE", "OTHER", 1),
                ("SEND_MESSAGE", "SUCCESS", 2)
            ]
        );
    }
}
