//! `mongowatch aggregate`: the last record of each WatchID. A long operation is written more
//! than once (a `timeout` record, then one per later batch, then the final one); the last is
//! the truth, and an aggregated log holds only it.

use std::collections::HashMap;

use super::Log;

/// What aggregating did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub records_in: usize,
    pub records_out: usize,
}

/// The log's text with only the last record of each WatchID, in the order those were written
/// (the output is the input with the superseded records taken out, header included).
pub fn aggregate(log: &Log) -> (String, Summary) {
    let mut last: HashMap<&str, usize> = HashMap::new();
    for (i, e) in log.entries.iter().enumerate() {
        last.insert(&e.fields.watch_id, i);
    }
    let mut out = log.header.clone().unwrap_or_default();
    let mut records_out = 0;
    for (i, e) in log.entries.iter().enumerate() {
        if last[e.fields.watch_id.as_str()] == i {
            out.push_str(&e.text);
            records_out += 1;
        }
    }
    (
        out,
        Summary {
            records_in: log.entries.len(),
            records_out,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::read_log;

    /// A find that timed out twice before its cursor was exhausted, a count, and an insert
    /// closed with its connection after a timeout; a rate summary line in between is no record.
    const JSONL: &str = concat!(
        r#"{"WatchID":"6b05c0fd6fe5357b62000001","Operation":"find","Iteration":1,"State":"timeout","MatchedCount":101}"#,
        "\n",
        r#"{"WatchID":"6b05c0fd6fe5357b62000002","Operation":"count","Iteration":1,"State":"final","MatchedCount":7}"#,
        "\n",
        r#"{"Kind":"rate","Rates":[]}"#,
        "\n",
        r#"{"WatchID":"6b05c0fd6fe5357b62000003","Operation":"insert","Iteration":1,"State":"timeout","MatchedCount":null}"#,
        "\n",
        r#"{"WatchID":"6b05c0fd6fe5357b62000001","Operation":"find","Iteration":3,"State":"timeout","MatchedCount":303}"#,
        "\n",
        r#"{"WatchID":"6b05c0fd6fe5357b62000001","Operation":"find","Iteration":4,"State":"final","MatchedCount":350}"#,
        "\n",
        r#"{"WatchID":"6b05c0fd6fe5357b62000003","Operation":"insert","Iteration":1,"State":"closed","MatchedCount":null}"#,
        "\n",
    );

    #[test]
    fn json_lines_keep_the_last_of_each_watch_id() {
        let log = read_log("a.jsonl", JSONL.as_bytes()).unwrap();
        let (out, s) = aggregate(&log);
        let lines: Vec<&str> = JSONL.lines().collect();
        assert_eq!(out, format!("{}\n{}\n{}\n", lines[1], lines[5], lines[6]));
        assert_eq!(
            s,
            Summary {
                records_in: 6,
                records_out: 3
            }
        );
        assert_eq!(log.skipped.len(), 1, "the rate line is left out, and said");
        // Aggregating again changes nothing.
        let again = aggregate(&read_log("b", out.as_bytes()).unwrap()).0;
        assert_eq!(again, out);
    }

    #[test]
    fn csv_keeps_its_header_and_quoted_rows() {
        let csv = "WatchID,Operation,Filter,AppName,State\n\
                   a,find,\"{\"\"s\"\":\"\"x,y\"\"}\",\"two\n lines\",timeout\n\
                   b,count,,,final\n\
                   a,find,\"{\"\"s\"\":\"\"x,y\"\"}\",\"two\n lines\",final\n";
        let (out, s) = aggregate(&read_log("a.csv", csv.as_bytes()).unwrap());
        assert_eq!(
            out,
            "WatchID,Operation,Filter,AppName,State\n\
             b,count,,,final\n\
             a,find,\"{\"\"s\"\":\"\"x,y\"\"}\",\"two\n lines\",final\n"
        );
        assert_eq!((s.records_in, s.records_out), (3, 2));
    }
}
