//! Reading Nexmark events from JSON lines fast: a decoder for the
//! JSON-lines file source ([`flowstate::connectors::file::LineDecoder`]) that
//! parses the flat objects `nexmark generate` writes in one pass, without an
//! intermediate value, and materialises only the text fields the query reads
//! ([`Fields`]); the others are left empty (no allocation).
//!
//! The contract is serde's: a line is accepted exactly when `serde_json`
//! accepts it as the event type, with the same values. The fast path takes
//! only what it can decide alone: a compact object (no whitespace between
//! tokens) of the type's fields, each once, in any order; integers without
//! sign (`u64` fields) or with an optional `-` (`i64`), no leading zeros,
//! in range; strings of printable ASCII without escapes. Anything else
//! (whitespace, escapes, non-ASCII text, an unknown, missing or repeated
//! field, a fraction, a malformed line) goes to `serde_json`, which decodes
//! it or gives the error the source reports with the file and line.
//!
//! Owns decoding only; the events are `model`'s, which fields a query reads
//! is `queries`'.

use flowstate::connectors::file::LineDecoder;
use serde::de::DeserializeOwned;

use crate::nexmark::model::{Auction, Bid, Person};

/// The text fields of the events a query reads; the others are decoded
/// (checked) but left empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fields(u16);

impl Fields {
    pub const NONE: Fields = Fields(0);
    pub const ALL: Fields = Fields(u16::MAX);
    pub const PERSON_NAME: Fields = Fields(1);
    pub const PERSON_EMAIL_ADDRESS: Fields = Fields(1 << 1);
    pub const PERSON_CREDIT_CARD: Fields = Fields(1 << 2);
    pub const PERSON_CITY: Fields = Fields(1 << 3);
    pub const PERSON_STATE: Fields = Fields(1 << 4);
    pub const PERSON_EXTRA: Fields = Fields(1 << 5);
    pub const AUCTION_ITEM_NAME: Fields = Fields(1 << 6);
    pub const AUCTION_DESCRIPTION: Fields = Fields(1 << 7);
    pub const AUCTION_EXTRA: Fields = Fields(1 << 8);
    pub const BID_CHANNEL: Fields = Fields(1 << 9);
    pub const BID_URL: Fields = Fields(1 << 10);
    pub const BID_EXTRA: Fields = Fields(1 << 11);

    /// Both sets.
    pub const fn with(self, other: Fields) -> Fields {
        Fields(self.0 | other.0)
    }

    #[inline]
    pub fn has(self, field: Fields) -> bool {
        self.0 & field.0 != 0
    }

    /// `text` if the field is kept, else empty.
    #[inline]
    fn text(self, field: Fields, text: &[u8]) -> Option<String> {
        if self.has(field) {
            // ASCII (checked by the scan): valid UTF-8.
            std::str::from_utf8(text).ok().map(str::to_owned)
        } else {
            Some(String::new())
        }
    }

    /// `text` itself if kept, else empty (after a decode by serde).
    #[inline]
    fn keep(self, field: Fields, text: &mut String) {
        if !self.has(field) {
            *text = String::new();
        }
    }
}

/// Decodes Nexmark's `Person`, `Auction` and `Bid` lines, keeping `fields`.
#[derive(Debug, Clone, Copy)]
pub struct EventDecoder {
    pub fields: Fields,
}

/// A value of the fast path.
#[derive(Clone, Copy)]
enum Value<'a> {
    /// The bytes between the quotes: printable ASCII, no escapes.
    Text(&'a [u8]),
    /// An integer: negative, and its magnitude.
    Integer(bool, u64),
}

impl Value<'_> {
    #[inline]
    fn unsigned(self) -> Option<u64> {
        match self {
            Value::Integer(false, n) => Some(n),
            _ => None,
        }
    }

    #[inline]
    fn signed(self) -> Option<i64> {
        match self {
            Value::Integer(false, n) => i64::try_from(n).ok(),
            Value::Integer(true, n) => 0i64.checked_sub_unsigned(n),
            Value::Text(_) => None,
        }
    }
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The bytes of `word` below `n` (`n <= 128`), as their high bits; exact
/// for the lowest such byte (borrows only carry upwards).
#[inline]
fn below(word: u64, n: u8) -> u64 {
    word.wrapping_sub(ONES * u64::from(n)) & !word & HIGHS
}

/// The bytes of `word` equal to `b`, likewise.
#[inline]
fn equal(word: u64, b: u8) -> u64 {
    below(word ^ (ONES * u64::from(b)), 1)
}

/// A one-pass scanner over a compact flat JSON object.
struct Scan<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Scan<'a> {
    fn new(s: &'a [u8]) -> Option<Self> {
        (s.first() == Some(&b'{')).then_some(Scan { s, i: 1 })
    }

    /// The string whose opening quote is at `i`; `None` at an escape, a
    /// control or non-ASCII byte, or the end. Eight bytes at a time (keys
    /// and most values are short: no call per string).
    #[inline]
    fn string(&mut self) -> Option<&'a [u8]> {
        if self.s.get(self.i) != Some(&b'"') {
            return None;
        }
        let start = self.i + 1;
        let mut i = start;
        while let Some(chunk) = self.s.get(i..i + 8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            let word = u64::from_le_bytes(word);
            let special =
                equal(word, b'"') | equal(word, b'\\') | below(word, 0x20) | (word & HIGHS);
            if special != 0 {
                // The lowest flagged byte is exact.
                i += (special.trailing_zeros() / 8) as usize;
                break;
            }
            i += 8;
        }
        while self
            .s
            .get(i)
            .is_some_and(|&b| (0x20..0x80).contains(&b) && b != b'"' && b != b'\\')
        {
            i += 1;
        }
        if self.s.get(i) != Some(&b'"') {
            return None;
        }
        self.i = i + 1;
        Some(&self.s[start..i])
    }

    /// An integer at `i`: `-`? then `0` or a non-zero digit and digits, in
    /// range.
    #[inline]
    fn integer(&mut self) -> Option<Value<'a>> {
        let negative = self.s.get(self.i) == Some(&b'-');
        if negative {
            self.i += 1;
        }
        let start = self.i;
        let mut n: u64 = 0;
        while let Some(&b) = self.s.get(self.i) {
            if !b.is_ascii_digit() {
                break;
            }
            n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
            self.i += 1;
        }
        let digits = self.i - start;
        if digits == 0 || (digits > 1 && self.s[start] == b'0') {
            return None;
        }
        Some(Value::Integer(negative, n))
    }

    /// The next `"key":value`, `Some(None)` at the end of the object (which
    /// must end the line), `None` if the fast path cannot decide.
    #[inline]
    fn field(&mut self) -> Option<Option<(&'a [u8], Value<'a>)>> {
        match self.s.get(self.i) {
            // `{}`: fields are missing.
            Some(b'}') if self.i == 1 => return None,
            Some(b'}') => return (self.i + 1 == self.s.len()).then_some(None),
            _ => {}
        }
        let key = self.string()?;
        if self.s.get(self.i) != Some(&b':') {
            return None;
        }
        self.i += 1;
        let value = match self.s.get(self.i) {
            Some(b'"') => Value::Text(self.string()?),
            _ => self.integer()?,
        };
        match self.s.get(self.i) {
            Some(b',') if self.s.get(self.i + 1) == Some(&b'"') => self.i += 1,
            Some(b'}') => {}
            _ => return None,
        }
        Some(Some((key, value)))
    }
}

/// Sets `slot` to `value` once; `None` (not decidable) for a repeated field
/// or a value of another type.
#[inline]
fn put<V>(slot: &mut Option<V>, value: Option<V>) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(value?);
    Some(())
}

#[inline]
fn text(value: Value<'_>) -> Option<&[u8]> {
    match value {
        Value::Text(t) => Some(t),
        Value::Integer(..) => None,
    }
}

fn fast_person(line: &[u8], keep: Fields) -> Option<Person> {
    let mut scan = Scan::new(line)?;
    let (mut id, mut date_time) = (None, None);
    let (mut name, mut email, mut card, mut city, mut state, mut extra) =
        (None, None, None, None, None, None);
    while let Some((key, value)) = scan.field()? {
        match key {
            b"id" => put(&mut id, value.unsigned())?,
            b"name" => put(&mut name, text(value))?,
            b"emailAddress" => put(&mut email, text(value))?,
            b"creditCard" => put(&mut card, text(value))?,
            b"city" => put(&mut city, text(value))?,
            b"state" => put(&mut state, text(value))?,
            b"dateTime" => put(&mut date_time, value.signed())?,
            b"extra" => put(&mut extra, text(value))?,
            _ => return None,
        }
    }
    Some(Person {
        id: id?,
        name: keep.text(Fields::PERSON_NAME, name?)?,
        email_address: keep.text(Fields::PERSON_EMAIL_ADDRESS, email?)?,
        credit_card: keep.text(Fields::PERSON_CREDIT_CARD, card?)?,
        city: keep.text(Fields::PERSON_CITY, city?)?,
        state: keep.text(Fields::PERSON_STATE, state?)?,
        date_time: date_time?,
        extra: keep.text(Fields::PERSON_EXTRA, extra?)?,
    })
}

fn fast_auction(line: &[u8], keep: Fields) -> Option<Auction> {
    let mut scan = Scan::new(line)?;
    let (mut id, mut initial_bid, mut reserve, mut seller, mut category) =
        (None, None, None, None, None);
    let (mut date_time, mut expires) = (None, None);
    let (mut item_name, mut description, mut extra) = (None, None, None);
    while let Some((key, value)) = scan.field()? {
        match key {
            b"id" => put(&mut id, value.unsigned())?,
            b"itemName" => put(&mut item_name, text(value))?,
            b"description" => put(&mut description, text(value))?,
            b"initialBid" => put(&mut initial_bid, value.unsigned())?,
            b"reserve" => put(&mut reserve, value.unsigned())?,
            b"dateTime" => put(&mut date_time, value.signed())?,
            b"expires" => put(&mut expires, value.signed())?,
            b"seller" => put(&mut seller, value.unsigned())?,
            b"category" => put(&mut category, value.unsigned())?,
            b"extra" => put(&mut extra, text(value))?,
            _ => return None,
        }
    }
    Some(Auction {
        id: id?,
        item_name: keep.text(Fields::AUCTION_ITEM_NAME, item_name?)?,
        description: keep.text(Fields::AUCTION_DESCRIPTION, description?)?,
        initial_bid: initial_bid?,
        reserve: reserve?,
        date_time: date_time?,
        expires: expires?,
        seller: seller?,
        category: category?,
        extra: keep.text(Fields::AUCTION_EXTRA, extra?)?,
    })
}

fn fast_bid(line: &[u8], keep: Fields) -> Option<Bid> {
    let mut scan = Scan::new(line)?;
    let (mut auction, mut bidder, mut price, mut date_time) = (None, None, None, None);
    let (mut channel, mut url, mut extra) = (None, None, None);
    while let Some((key, value)) = scan.field()? {
        match key {
            b"auction" => put(&mut auction, value.unsigned())?,
            b"bidder" => put(&mut bidder, value.unsigned())?,
            b"price" => put(&mut price, value.unsigned())?,
            b"channel" => put(&mut channel, text(value))?,
            b"url" => put(&mut url, text(value))?,
            b"dateTime" => put(&mut date_time, value.signed())?,
            b"extra" => put(&mut extra, text(value))?,
            _ => return None,
        }
    }
    Some(Bid {
        auction: auction?,
        bidder: bidder?,
        price: price?,
        channel: keep.text(Fields::BID_CHANNEL, channel?)?,
        url: keep.text(Fields::BID_URL, url?)?,
        date_time: date_time?,
        extra: keep.text(Fields::BID_EXTRA, extra?)?,
    })
}

fn serde<T: DeserializeOwned>(line: &[u8]) -> Result<T, String> {
    serde_json::from_slice(line).map_err(|e| e.to_string())
}

impl LineDecoder<Person> for EventDecoder {
    fn decode(&self, line: &[u8]) -> Result<Person, String> {
        if let Some(p) = fast_person(line, self.fields) {
            return Ok(p);
        }
        let mut p: Person = serde(line)?;
        let k = self.fields;
        k.keep(Fields::PERSON_NAME, &mut p.name);
        k.keep(Fields::PERSON_EMAIL_ADDRESS, &mut p.email_address);
        k.keep(Fields::PERSON_CREDIT_CARD, &mut p.credit_card);
        k.keep(Fields::PERSON_CITY, &mut p.city);
        k.keep(Fields::PERSON_STATE, &mut p.state);
        k.keep(Fields::PERSON_EXTRA, &mut p.extra);
        Ok(p)
    }
}

impl LineDecoder<Auction> for EventDecoder {
    fn decode(&self, line: &[u8]) -> Result<Auction, String> {
        if let Some(a) = fast_auction(line, self.fields) {
            return Ok(a);
        }
        let mut a: Auction = serde(line)?;
        let k = self.fields;
        k.keep(Fields::AUCTION_ITEM_NAME, &mut a.item_name);
        k.keep(Fields::AUCTION_DESCRIPTION, &mut a.description);
        k.keep(Fields::AUCTION_EXTRA, &mut a.extra);
        Ok(a)
    }
}

impl LineDecoder<Bid> for EventDecoder {
    #[inline]
    fn decode(&self, line: &[u8]) -> Result<Bid, String> {
        if let Some(b) = fast_bid(line, self.fields) {
            return Ok(b);
        }
        let mut b: Bid = serde(line)?;
        let k = self.fields;
        k.keep(Fields::BID_CHANNEL, &mut b.channel);
        k.keep(Fields::BID_URL, &mut b.url);
        k.keep(Fields::BID_EXTRA, &mut b.extra);
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nexmark::generator::GeneratorConfig;
    use crate::nexmark::model::Event;

    fn decode<T>(line: &str, fields: Fields) -> Result<T, String>
    where
        EventDecoder: LineDecoder<T>,
    {
        EventDecoder { fields }.decode(line.as_bytes())
    }

    /// What serde makes of `line`, with the text not in `fields` left empty.
    fn expected<T: DeserializeOwned>(
        line: &str,
        fields: Fields,
        clear: fn(&mut T, Fields),
    ) -> Result<T, String> {
        let mut value: T = serde(line.as_bytes())?;
        clear(&mut value, fields);
        Ok(value)
    }

    fn clear_person(p: &mut Person, k: Fields) {
        k.keep(Fields::PERSON_NAME, &mut p.name);
        k.keep(Fields::PERSON_EMAIL_ADDRESS, &mut p.email_address);
        k.keep(Fields::PERSON_CREDIT_CARD, &mut p.credit_card);
        k.keep(Fields::PERSON_CITY, &mut p.city);
        k.keep(Fields::PERSON_STATE, &mut p.state);
        k.keep(Fields::PERSON_EXTRA, &mut p.extra);
    }

    fn clear_auction(a: &mut Auction, k: Fields) {
        k.keep(Fields::AUCTION_ITEM_NAME, &mut a.item_name);
        k.keep(Fields::AUCTION_DESCRIPTION, &mut a.description);
        k.keep(Fields::AUCTION_EXTRA, &mut a.extra);
    }

    fn clear_bid(b: &mut Bid, k: Fields) {
        k.keep(Fields::BID_CHANNEL, &mut b.channel);
        k.keep(Fields::BID_URL, &mut b.url);
        k.keep(Fields::BID_EXTRA, &mut b.extra);
    }

    #[test]
    fn generated_lines_take_the_fast_path_and_decode_like_serde() {
        let config = GeneratorConfig::default();
        let projections = [
            Fields::ALL,
            Fields::NONE,
            Fields::BID_EXTRA,
            Fields::PERSON_NAME.with(Fields::PERSON_STATE),
        ];
        for i in 0..2_000 {
            let event = config.event(i);
            let line = event.to_json().unwrap();
            for fields in projections {
                match &event {
                    Event::Person(p) => {
                        assert!(fast_person(line.as_bytes(), fields).is_some(), "{line}");
                        let mut want = p.clone();
                        clear_person(&mut want, fields);
                        assert_eq!(decode::<Person>(&line, fields), Ok(want));
                    }
                    Event::Auction(a) => {
                        assert!(fast_auction(line.as_bytes(), fields).is_some(), "{line}");
                        let mut want = a.clone();
                        clear_auction(&mut want, fields);
                        assert_eq!(decode::<Auction>(&line, fields), Ok(want));
                    }
                    Event::Bid(b) => {
                        assert!(fast_bid(line.as_bytes(), fields).is_some(), "{line}");
                        let mut want = b.clone();
                        clear_bid(&mut want, fields);
                        assert_eq!(decode::<Bid>(&line, fields), Ok(want));
                    }
                }
            }
        }
    }

    #[test]
    fn what_the_fast_path_cannot_decide_is_serdes() {
        let bid = r#"{"auction":1000,"bidder":1001,"price":42,"channel":"Google","url":"https://x/y?z=1","dateTime":1700000000000,"extra":"abc"}"#;
        let variants = [
            bid.to_owned(),
            // Field order does not matter.
            r#"{"extra":"abc","dateTime":-5,"url":"u","channel":"c","price":0,"bidder":1,"auction":2}"#.to_owned(),
            bid.replace(',', ", "),
            bid.replace(':', " : "),
            bid.replace("abc", r#"a\"b\\c\n"#),
            bid.replace("abc", r"\u00e9t\u00e9"),
            bid.replace("abc", "été"),
            bid.replace("abc", "tab\there"),
            bid.replace("abc", "\u{7f}"),
            bid.replace("abc", ""),
            bid.replace("\"price\":42", "\"price\":42.0"),
            bid.replace("\"price\":42", "\"price\":4e1"),
            bid.replace("\"price\":42", "\"price\":-42"),
            bid.replace("\"price\":42", "\"price\":-0"),
            bid.replace("\"price\":42", "\"price\":042"),
            bid.replace("\"price\":42", "\"price\":18446744073709551615"),
            bid.replace("\"price\":42", "\"price\":18446744073709551616"),
            bid.replace("\"price\":42", "\"price\":\"42\""),
            bid.replace("\"price\":42", "\"price\":null"),
            bid.replace("1700000000000", "-9223372036854775808"),
            bid.replace("1700000000000", "9223372036854775808"),
            bid.replace("1700000000000", "-"),
            bid.replace("\"price\":42,", ""),
            bid.replace("\"price\":42,", "\"price\":42,\"price\":43,"),
            bid.replace("\"price\":42,", "\"price\":42,\"other\":[1,{\"a\":2}],"),
            bid.replace("\"channel\":\"Google\"", "\"channel\":7"),
            format!("{bid} x"),
            format!("{bid}}}"),
            bid.replace(",\"extra\"", ",,\"extra\""),
            bid.replace("}", ",}"),
            bid[..bid.len() - 1].to_owned(),
            bid[..40].to_owned(),
            "{}".to_owned(),
            "{".to_owned(),
            "[1,2]".to_owned(),
            "nonsense".to_owned(),
        ];
        for line in &variants {
            for fields in [Fields::ALL, Fields::NONE, Fields::BID_URL] {
                assert_eq!(
                    decode::<Bid>(line, fields),
                    expected(line, fields, clear_bid),
                    "{line}"
                );
            }
        }
        // The fast path took the plain ones.
        assert!(fast_bid(variants[0].as_bytes(), Fields::ALL).is_some());
        assert!(fast_bid(variants[1].as_bytes(), Fields::ALL).is_some());
        // And the others decode through serde where serde can.
        assert_eq!(
            decode::<Bid>(&variants[6], Fields::ALL).unwrap().extra,
            "été"
        );
        assert!(decode::<Bid>(&variants[16], Fields::ALL).is_err());

        let person = r#"{"id":1000,"name":"Peter Jones","emailAddress":"p@j.com","creditCard":"1234 5678","city":"Bend","state":"OR","dateTime":1700000000000,"extra":"x"}"#;
        let auction = r#"{"id":1000,"itemName":"it","description":"d","initialBid":1,"reserve":2,"dateTime":3,"expires":4,"seller":1000,"category":10,"extra":"e"}"#;
        for fields in [Fields::ALL, Fields::NONE, Fields::PERSON_CITY] {
            for line in [
                person.to_owned(),
                person.replace("Bend", "B\\u00e9nd"),
                person.replace("\"id\":1000,", ""),
            ] {
                assert_eq!(
                    decode::<Person>(&line, fields),
                    expected(&line, fields, clear_person),
                    "{line}"
                );
            }
            for line in [
                auction.to_owned(),
                auction.replace("\"expires\":4", "\"expires\":-4"),
                auction.replace("\"seller\":1000", "\"seller\":-1"),
            ] {
                assert_eq!(
                    decode::<Auction>(&line, fields),
                    expected(&line, fields, clear_auction),
                    "{line}"
                );
            }
        }
        assert!(fast_person(person.as_bytes(), Fields::ALL).is_some());
        assert!(fast_auction(auction.as_bytes(), Fields::ALL).is_some());
    }
}
