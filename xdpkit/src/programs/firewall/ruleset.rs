//! An ordered set of rules with stable ids, and rule files.

use std::{fmt, path::Path};

use super::rule::{Rule, RuleError};

/// A rule with its id. Ids from a file are 1-based line numbers; ids from
/// `rule add` are handed out by the ruleset and never reused while it lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Stable id (counters are kept per id).
    pub id: u32,
    /// Insertion order, the tie-breaker after `prio`.
    pub seq: u64,
    /// The rule.
    pub rule: Rule,
}

impl Entry {
    /// Sort key: lower `prio` first, then earlier insertion.
    pub fn rank(&self) -> (u32, u64) {
        (self.rule.prio, self.seq)
    }
}

/// Rules in judging order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ruleset {
    entries: Vec<Entry>,
    next_seq: u64,
}

/// A bad line in a rule file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {source}")]
pub struct FileError {
    /// The file, as given.
    pub file: String,
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    #[source]
    pub source: RuleError,
}

impl Ruleset {
    /// An empty ruleset.
    pub fn new() -> Ruleset {
        Ruleset::default()
    }

    /// Parses rule-file text: one rule a line, `#` comments and blank lines
    /// skipped, ids = line numbers. The first bad line fails the whole text,
    /// so nothing is applied from a file with an error.
    pub fn parse_file_text(name: &str, text: &str) -> Result<Ruleset, FileError> {
        Ruleset::parse_file_text_with(name, text, |_| {})
    }

    /// Like [`Ruleset::parse_file_text`], calling `progress(bytes_done)`
    /// every 4096 lines (for a progress bar over big files).
    pub fn parse_file_text_with(
        name: &str,
        text: &str,
        mut progress: impl FnMut(usize),
    ) -> Result<Ruleset, FileError> {
        let mut entries = Vec::new();
        let mut done = 0;
        for (index, line) in text.lines().enumerate() {
            done += line.len() + 1;
            if index % 4096 == 0 {
                progress(done.min(text.len()));
            }
            let line_no = index + 1;
            let content = line.split('#').next().unwrap_or_default();
            if content.trim().is_empty() {
                continue;
            }
            let rule = content.parse::<Rule>().map_err(|source| FileError {
                file: name.to_string(),
                line: line_no,
                source,
            })?;
            let id = u32::try_from(line_no).map_err(|_| FileError {
                file: name.to_string(),
                line: line_no,
                source: RuleError::Conflict("more than 4294967295 lines".to_string()),
            })?;
            entries.push(Entry {
                id,
                seq: entries.len() as u64,
                rule,
            });
        }
        Ok(Ruleset::from_entries(entries))
    }

    /// Reads and parses a rule file.
    pub fn read_file(path: &Path) -> Result<Ruleset, FileError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| FileError {
            file: name.clone(),
            line: 0,
            source: RuleError::Conflict(format!("cannot read: {e}")),
        })?;
        Ruleset::parse_file_text(&name, &text)
    }

    /// Adds `rule` under `id`, after every rule of the same priority.
    pub fn push(&mut self, id: u32, rule: Rule) {
        let entry = Entry {
            id,
            seq: self.next_seq,
            rule,
        };
        self.next_seq += 1;
        let at = self.entries.partition_point(|e| e.rank() <= entry.rank());
        self.entries.insert(at, entry);
    }

    /// A ruleset of stored entries (ids and sequence numbers kept), sorted
    /// once: O(n log n) where inserting one by one would be quadratic.
    pub fn from_entries(mut entries: Vec<Entry>) -> Ruleset {
        entries.sort_by_key(Entry::rank);
        let next_seq = entries.iter().map(|e| e.seq + 1).max().unwrap_or(0);
        Ruleset { entries, next_seq }
    }

    /// Adds a stored entry with its own id and sequence number.
    pub fn push_entry(&mut self, entry: Entry) {
        self.next_seq = self.next_seq.max(entry.seq + 1);
        let at = self.entries.partition_point(|e| e.rank() <= entry.rank());
        self.entries.insert(at, entry);
    }

    /// Makes later additions start at sequence `seq` or beyond.
    pub fn reserve_seq(&mut self, seq: u64) {
        self.next_seq = self.next_seq.max(seq);
    }

    /// The sequence number the next added rule gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Adds `rule` with the next free id (one more than the largest) and returns it.
    pub fn add(&mut self, rule: Rule) -> u32 {
        let id = self.entries.iter().map(|e| e.id).max().unwrap_or(0) + 1;
        self.push(id, rule);
        id
    }

    /// Removes the rule with `id`; false if there is none.
    pub fn remove(&mut self, id: u32) -> bool {
        let before = self.entries.len();
        self.entries.retain(|e| e.id != id);
        self.entries.len() != before
    }

    /// The entries in judging order, by value.
    pub fn into_entries(self) -> Vec<Entry> {
        self.entries
    }

    /// The entries in judging order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if there are no rules.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl fmt::Display for Ruleset {
    /// One `id: rule` a line, in judging order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.entries {
            writeln!(f, "{}: {}", e.id, e.rule)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_ids_are_line_numbers_and_order_is_prio_then_line() {
        let text = "# blocklist\n\ndeny src 198.18.0.0/15 prio 200\nallow src 198.18.1.0/24 prio 10\n  deny src 198.18.2.0/24   # same prio as line 3\n";
        let set = Ruleset::parse_file_text("rules.txt", text).unwrap();
        let order: Vec<u32> = set.entries().iter().map(|e| e.id).collect();
        assert_eq!(
            order,
            [4, 5, 3],
            "prio 10, then prio 100 (line 5), then prio 200"
        );
    }

    #[test]
    fn a_bad_line_names_file_and_line() {
        let err =
            Ruleset::parse_file_text("rules.txt", "deny src 198.18.0.1\ndeny src 198.18.0.300\n")
                .unwrap_err();
        assert_eq!(err.line, 2);
        assert!(
            err.to_string()
                .starts_with("rules.txt:2: bad src '198.18.0.300'"),
            "{err}"
        );
    }

    #[test]
    fn add_and_remove_keep_ids_stable() {
        let mut set = Ruleset::new();
        let a = set.add("deny src 198.18.0.1".parse().unwrap());
        let b = set.add("allow src 198.18.0.2 prio 1".parse().unwrap());
        assert_eq!((a, b), (1, 2));
        assert_eq!(set.entries()[0].id, 2, "prio 1 first");
        assert!(set.remove(a));
        assert!(!set.remove(a));
        assert_eq!(
            set.add("deny".parse().unwrap()),
            3,
            "ids are not reused while higher ones exist"
        );
        assert_eq!(
            set.to_string(),
            "2: allow src 198.18.0.2/32 prio 1\n3: deny prio 100\n"
        );
    }
}
