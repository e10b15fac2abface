//! The result rows of the Nexmark queries, their canonical text (one line:
//! the Flink SQL query's output columns in order, comma-separated, times as
//! epoch milliseconds, DECIMAL(23,3) with exactly three decimals) and the
//! order-independent checksum over them (docs/nexmark.md, "Checksum").
//!
//! Owns the rows' text and hash; the queries that make them are `queries`'.

use std::fmt::{self, Write as _};

use crate::workload::splitmix64;

/// One result row of a query.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Row {
    /// q0: `auction,bidder,price,dateTime,extra`.
    Q0 {
        auction: u64,
        bidder: u64,
        price: u64,
        date_time: i64,
        extra: String,
    },
    /// q1: `auction,bidder,price*0.908,dateTime,extra` (three decimals).
    Q1 {
        auction: u64,
        bidder: u64,
        /// The converted price in thousandths: `price * 908`.
        price_milli: u64,
        date_time: i64,
        extra: String,
    },
    /// q2: `auction,price`.
    Q2 { auction: u64, price: u64 },
    /// q3: `name,city,state,id` (the auction's id).
    Q3 {
        name: String,
        city: String,
        state: String,
        id: u64,
    },
    /// q4: `category,avg_final` (integer average, truncated, like Flink's
    /// `AVG` over BIGINT).
    Q4 { category: u64, avg_final: u64 },
    /// q5: `auction,num`.
    Q5 { auction: u64, num: u64 },
    /// q7: `auction,price,bidder,dateTime,extra`.
    Q7 {
        auction: u64,
        price: u64,
        bidder: u64,
        date_time: i64,
        extra: String,
    },
    /// q8: `id,name,starttime`.
    Q8 { id: u64, name: String, start: i64 },
    /// q11: `bidder,bid_count,starttime,endtime`.
    Q11 {
        bidder: u64,
        bid_count: u64,
        start: i64,
        end: i64,
    },
}

impl fmt::Display for Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Row::Q0 {
                auction,
                bidder,
                price,
                date_time,
                extra,
            } => write!(f, "{auction},{bidder},{price},{date_time},{extra}"),
            Row::Q1 {
                auction,
                bidder,
                price_milli,
                date_time,
                extra,
            } => write!(
                f,
                "{auction},{bidder},{}.{:03},{date_time},{extra}",
                price_milli / 1000,
                price_milli % 1000
            ),
            Row::Q2 { auction, price } => write!(f, "{auction},{price}"),
            Row::Q3 {
                name,
                city,
                state,
                id,
            } => write!(f, "{name},{city},{state},{id}"),
            Row::Q4 {
                category,
                avg_final,
            } => write!(f, "{category},{avg_final}"),
            Row::Q5 { auction, num } => write!(f, "{auction},{num}"),
            Row::Q7 {
                auction,
                price,
                bidder,
                date_time,
                extra,
            } => write!(f, "{auction},{price},{bidder},{date_time},{extra}"),
            Row::Q8 { id, name, start } => write!(f, "{id},{name},{start}"),
            Row::Q11 {
                bidder,
                bid_count,
                start,
                end,
            } => write!(f, "{bidder},{bid_count},{start},{end}"),
        }
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a over the bytes written to it.
struct Fnv1a(u64);

impl Fnv1a {
    #[inline]
    fn bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(FNV_PRIME);
        }
    }

    /// `n` in decimal, as `Display` writes it.
    #[inline]
    fn unsigned(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.bytes(&digits[at..]);
    }

    #[inline]
    fn signed(&mut self, n: i64) {
        if n < 0 {
            self.bytes(b"-");
        }
        self.unsigned(n.unsigned_abs());
    }

    #[inline]
    fn comma(&mut self) {
        self.bytes(b",");
    }
}

impl fmt::Write for Fnv1a {
    #[inline]
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.bytes(s.as_bytes());
        Ok(())
    }
}

/// A line's hash: `splitmix64(fnv1a64(line))` over its UTF-8 bytes (no
/// line break).
pub fn line_hash(line: &str) -> u64 {
    let mut h = Fnv1a(FNV_OFFSET);
    let _ = h.write_str(line);
    splitmix64(h.0)
}

/// [`line_hash`] of a row's canonical line (its `Display`), without
/// building the line: the same bytes fed to the hash directly.
pub fn row_hash(row: &Row) -> u64 {
    let mut h = Fnv1a(FNV_OFFSET);
    match row {
        Row::Q0 {
            auction,
            bidder,
            price,
            date_time,
            extra,
        } => {
            h.unsigned(*auction);
            h.comma();
            h.unsigned(*bidder);
            h.comma();
            h.unsigned(*price);
            h.comma();
            h.signed(*date_time);
            h.comma();
            h.bytes(extra.as_bytes());
        }
        Row::Q1 {
            auction,
            bidder,
            price_milli,
            date_time,
            extra,
        } => {
            h.unsigned(*auction);
            h.comma();
            h.unsigned(*bidder);
            h.comma();
            h.unsigned(price_milli / 1000);
            let milli = price_milli % 1000;
            h.bytes(&[
                b'.',
                b'0' + (milli / 100) as u8,
                b'0' + (milli / 10 % 10) as u8,
                b'0' + (milli % 10) as u8,
            ]);
            h.comma();
            h.signed(*date_time);
            h.comma();
            h.bytes(extra.as_bytes());
        }
        Row::Q7 {
            auction,
            price,
            bidder,
            date_time,
            extra,
        } => {
            h.unsigned(*auction);
            h.comma();
            h.unsigned(*price);
            h.comma();
            h.unsigned(*bidder);
            h.comma();
            h.signed(*date_time);
            h.comma();
            h.bytes(extra.as_bytes());
        }
        // Few rows: through `Display`. Writing into a hasher cannot fail.
        other => {
            let _ = write!(h, "{other}");
        }
    }
    splitmix64(h.0)
}

/// The order-independent checksum of a multiset of rows: their count and the
/// wrapping sum of their [`line_hash`]es.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RowChecksum {
    pub rows: u64,
    pub sum: u64,
}

impl RowChecksum {
    #[inline]
    pub fn add_hash(&mut self, hash: u64) {
        self.rows += 1;
        self.sum = self.sum.wrapping_add(hash);
    }

    pub fn add_line(&mut self, line: &str) {
        self.add_hash(line_hash(line));
    }
}

impl crate::totals::Share for RowChecksum {
    fn merge(&mut self, share: &Self) {
        self.rows += share.rows;
        self.sum = self.sum.wrapping_add(share.sum);
    }
    fn remove(&mut self, share: &Self) {
        self.rows -= share.rows;
        self.sum = self.sum.wrapping_sub(share.sum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_row_hash_is_the_hash_of_its_line() {
        let row = Row::Q1 {
            auction: 1000,
            bidder: 1001,
            price_milli: 1234 * 908,
            date_time: 1_700_000_000_000,
            extra: "abc".into(),
        };
        assert_eq!(row.to_string(), "1000,1001,1120.472,1700000000000,abc");
        assert_eq!(row_hash(&row), line_hash(&row.to_string()));
        // Every row kind, with edge values (zero, negative and extreme
        // numbers, prices with leading zeros in the thousandths, empty text).
        let text = ["", "abc", "a b,c"];
        let numbers = [0u64, 7, 10, 999, 1000, 1001, 123_456_789, u64::MAX];
        let times = [0i64, -1, -10_000, 1_700_000_000_000, i64::MIN, i64::MAX];
        let mut rows = Vec::new();
        for (i, &n) in numbers.iter().enumerate() {
            let t = times[i % times.len()];
            let s = text[i % text.len()].to_owned();
            let m = numbers[(i + 3) % numbers.len()];
            rows.extend([
                Row::Q0 {
                    auction: n,
                    bidder: m,
                    price: n,
                    date_time: t,
                    extra: s.clone(),
                },
                Row::Q1 {
                    auction: m,
                    bidder: n,
                    price_milli: n,
                    date_time: t,
                    extra: s.clone(),
                },
                Row::Q2 {
                    auction: n,
                    price: m,
                },
                Row::Q3 {
                    name: s.clone(),
                    city: s.clone(),
                    state: s.clone(),
                    id: n,
                },
                Row::Q4 {
                    category: n,
                    avg_final: m,
                },
                Row::Q5 { auction: n, num: m },
                Row::Q7 {
                    auction: n,
                    price: m,
                    bidder: n,
                    date_time: t,
                    extra: s.clone(),
                },
                Row::Q8 {
                    id: n,
                    name: s.clone(),
                    start: t,
                },
                Row::Q11 {
                    bidder: n,
                    bid_count: m,
                    start: t,
                    end: t,
                },
            ]);
        }
        for row in &rows {
            assert_eq!(row_hash(row), line_hash(&row.to_string()), "{row}");
        }
        // FNV-1a's published value for "a", then splitmix64.
        assert_eq!(line_hash("a"), splitmix64(0xaf63_dc4c_8601_ec8c));
    }

    #[test]
    fn the_checksum_does_not_depend_on_order_but_counts_duplicates() {
        let mut a = RowChecksum::default();
        let mut b = RowChecksum::default();
        for l in ["x", "y", "x"] {
            a.add_line(l);
        }
        for l in ["x", "x", "y"] {
            b.add_line(l);
        }
        assert_eq!(a, b);
        let mut c = RowChecksum::default();
        for l in ["x", "y"] {
            c.add_line(l);
        }
        assert_ne!(a.sum, c.sum);
    }
}
