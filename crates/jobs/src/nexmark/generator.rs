//! A deterministic Nexmark event generator following the reference
//! generator's model (Apache Beam/Flink Nexmark's `GeneratorConfig` and
//! `NexmarkGenerator`), with one difference that matters here: every event
//! is a pure function of its index `i` (its random choices come from a
//! generator seeded with `i`), so any split can generate any range of
//! events, in any order, again after a restore.
//!
//! The model (docs/nexmark.md, "The generator"):
//! - event `i` is a person, an auction or a bid by `i mod 50` with the
//!   proportions 1 : 3 : 46;
//! - ids: person ids count the people generated so far from 1000, auction
//!   ids the auctions from 1000; categories are 10..15;
//! - event time: `base + floor(i * 1000 / rate)` ms, non-decreasing in `i`
//!   (the reference's out-of-order group size is 1: no disorder);
//! - an auction's seller is a hot seller (the first of the last block of 100
//!   people) with probability 3/4, otherwise one of the 1000 most recent
//!   people (plus a lead of 10 not yet created); a bid's auction is a hot
//!   auction (the first of the last block of 100 auctions) with probability
//!   1/2, otherwise one of the 100 auctions in flight (plus a lead of 10);
//!   its bidder a hot bidder (the second of the last block of 100 people)
//!   with probability 3/4, otherwise a recent person;
//! - prices `round(100 * 10^(6u))` for uniform `u`; an auction runs for a
//!   uniform time up to twice the time until 100 more auctions exist;
//! - `extra` pads each event to an average size (person 200, auction 500,
//!   bid 100 bytes) with random letters.
//!
//! Owns the events' contents only; the source that cuts the index range into
//! splits is `flowstate::connectors::sequence`.

use crate::nexmark::model::{Auction, Bid, Event, Person};
use crate::workload::splitmix64;

/// First person id.
pub const FIRST_PERSON_ID: u64 = 1000;
/// First auction id.
pub const FIRST_AUCTION_ID: u64 = 1000;
/// First category id.
pub const FIRST_CATEGORY_ID: u64 = 10;
/// Event time of event 0 (ms since the Unix epoch): 2023-11-14T22:13:20Z.
pub const BASE_TIME_MS: i64 = 1_700_000_000_000;
/// The reference's default event rate (events per second of event time).
pub const DEFAULT_RATE: u64 = 10_000;

const PERSON_PROPORTION: u64 = 1;
const AUCTION_PROPORTION: u64 = 3;
const BID_PROPORTION: u64 = 46;
const TOTAL_PROPORTION: u64 = PERSON_PROPORTION + AUCTION_PROPORTION + BID_PROPORTION;

const NUM_CATEGORIES: u64 = 5;
const PERSON_ID_LEAD: u64 = 10;
const AUCTION_ID_LEAD: u64 = 10;
/// Hot sellers, auctions and bidders are the first of a block of this many.
const HOT_BLOCK: u64 = 100;
const HOT_CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];
/// Distinct channels besides the hot ones.
const CHANNELS: u64 = 10_000;

const US_STATES: [&str; 6] = ["AZ", "CA", "ID", "OR", "WA", "WY"];
const US_CITIES: [&str; 10] = [
    "Phoenix",
    "Los Angeles",
    "San Francisco",
    "Boise",
    "Portland",
    "Bend",
    "Redmond",
    "Seattle",
    "Kent",
    "Cheyenne",
];
const FIRST_NAMES: [&str; 11] = [
    "Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter",
];
const LAST_NAMES: [&str; 9] = [
    "Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris",
];

/// The generator's parameters (the reference's `NexmarkConfiguration`
/// defaults, except the base time, which is fixed so runs are repeatable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GeneratorConfig {
    /// Events per second of event time (the reference's `firstEventRate`).
    pub rate: u64,
    pub base_time_ms: i64,
    /// Seeds every event's random choices.
    pub seed: u64,
    /// 1 in `hot_auction_ratio` bids is for a random auction, the rest for a hot one.
    pub hot_auction_ratio: u64,
    /// 1 in `hot_sellers_ratio` auctions has a random seller.
    pub hot_sellers_ratio: u64,
    /// 1 in `hot_bidders_ratio` bids is by a random bidder.
    pub hot_bidders_ratio: u64,
    pub num_active_people: u64,
    pub num_in_flight_auctions: u64,
    pub avg_person_bytes: usize,
    pub avg_auction_bytes: usize,
    pub avg_bid_bytes: usize,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        Self {
            rate: DEFAULT_RATE,
            base_time_ms: BASE_TIME_MS,
            seed: 0,
            hot_auction_ratio: 2,
            hot_sellers_ratio: 4,
            hot_bidders_ratio: 4,
            num_active_people: 1000,
            num_in_flight_auctions: 100,
            avg_person_bytes: 200,
            avg_auction_bytes: 500,
            avg_bid_bytes: 100,
        }
    }
}

/// The random choices of one event: a splitmix64 stream seeded with its index.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, event: u64) -> Self {
        Rng(splitmix64(seed ^ splitmix64(event)))
    }

    #[inline]
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n >= 1`).
    #[inline]
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n.max(1))) >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    #[inline]
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }

    /// 3 to `max_len - 1` characters, letters with about one space in 13,
    /// trimmed (the reference's `nextString`).
    fn string(&mut self, max_len: u64) -> String {
        let len = 3 + self.below(max_len - 3);
        let mut s = String::with_capacity(len as usize);
        for _ in 0..len {
            if self.below(13) == 0 {
                s.push(' ');
            } else {
                s.push((b'a' + self.below(26) as u8) as char);
            }
        }
        s.trim().to_owned()
    }

    /// Exactly `len` letters.
    fn letters(&mut self, len: usize) -> String {
        let mut s = String::with_capacity(len);
        let mut bits = 0u64;
        let mut left = 0;
        for _ in 0..len {
            if left == 0 {
                bits = self.next_u64();
                left = 13; // 26^13 < 2^64
            }
            s.push((b'a' + (bits % 26) as u8) as char);
            bits /= 26;
            left -= 1;
        }
        s
    }

    /// Padding so that `current + len` averages `average` (±20%).
    fn extra(&mut self, current: usize, average: usize) -> String {
        if current > average {
            return String::new();
        }
        let wanted = average - current;
        let delta = (wanted as f64 * 0.2).round() as usize;
        let size = wanted - delta
            + if delta == 0 {
                0
            } else {
                self.below(2 * delta as u64) as usize
            };
        self.letters(size)
    }

    /// `round(100 * 10^(6u))`: 100 to 10^8, log-uniform.
    fn price(&mut self) -> u64 {
        (10f64.powf(self.unit() * 6.0) * 100.0).round() as u64
    }
}

/// The last person id (base 0) created at or before event `i`.
#[inline]
pub fn last_base0_person_id(i: u64) -> u64 {
    let epoch = i / TOTAL_PROPORTION;
    let offset = i % TOTAL_PROPORTION;
    // An auction or a bid: the last person of this epoch.
    let offset = if offset < PERSON_PROPORTION {
        offset
    } else {
        PERSON_PROPORTION - 1
    };
    epoch * PERSON_PROPORTION + offset
}

/// The last auction id (base 0) created at or before event `i` (0 before
/// the first auction: only auctions and bids use it, and they come after one).
#[inline]
pub fn last_base0_auction_id(i: u64) -> u64 {
    let epoch = i / TOTAL_PROPORTION;
    let offset = i % TOTAL_PROPORTION;
    if offset < PERSON_PROPORTION {
        // A person: the last auction of the previous epoch.
        (epoch * AUCTION_PROPORTION).saturating_sub(1)
    } else if offset >= PERSON_PROPORTION + AUCTION_PROPORTION {
        // A bid: the last auction of this epoch.
        epoch * AUCTION_PROPORTION + AUCTION_PROPORTION - 1
    } else {
        epoch * AUCTION_PROPORTION + offset - PERSON_PROPORTION
    }
}

impl GeneratorConfig {
    /// The event time of event `i`.
    #[inline]
    pub fn timestamp(&self, i: u64) -> i64 {
        let rate = u128::from(self.rate.max(1));
        self.base_time_ms + (u128::from(i) * 1000 / rate) as i64
    }

    /// Event `i`.
    pub fn event(&self, i: u64) -> Event {
        let mut rng = Rng::new(self.seed, i);
        let ts = self.timestamp(i);
        let rem = i % TOTAL_PROPORTION;
        if rem < PERSON_PROPORTION {
            Event::Person(self.person(i, ts, &mut rng))
        } else if rem < PERSON_PROPORTION + AUCTION_PROPORTION {
            Event::Auction(self.auction(i, ts, &mut rng))
        } else {
            Event::Bid(self.bid(i, ts, &mut rng))
        }
    }

    /// A random recent person (base 0): one of the last `num_active_people`
    /// created, or one of `PERSON_ID_LEAD` still to come.
    fn random_person(&self, i: u64, rng: &mut Rng) -> u64 {
        let people = last_base0_person_id(i) + 1;
        let active = people.min(self.num_active_people);
        people - active + rng.below(active + PERSON_ID_LEAD)
    }

    /// A random auction in flight (base 0), or one of `AUCTION_ID_LEAD` to come.
    fn random_auction(&self, i: u64, rng: &mut Rng) -> u64 {
        let last = last_base0_auction_id(i);
        let first = last.saturating_sub(self.num_in_flight_auctions);
        first + rng.below(last - first + 1 + AUCTION_ID_LEAD)
    }

    fn person(&self, i: u64, ts: i64, rng: &mut Rng) -> Person {
        let id = last_base0_person_id(i) + FIRST_PERSON_ID;
        let name = format!("{} {}", rng.pick(&FIRST_NAMES), rng.pick(&LAST_NAMES));
        let email_address = format!("{}@{}.com", rng.string(7), rng.string(5));
        let credit_card = format!(
            "{:04} {:04} {:04} {:04}",
            rng.below(10_000),
            rng.below(10_000),
            rng.below(10_000),
            rng.below(10_000)
        );
        let city = rng.pick(&US_CITIES).to_owned();
        let state = rng.pick(&US_STATES).to_owned();
        let size =
            8 + name.len() + email_address.len() + credit_card.len() + city.len() + state.len();
        let extra = rng.extra(size, self.avg_person_bytes);
        Person {
            id,
            name,
            email_address,
            credit_card,
            city,
            state,
            date_time: ts,
            extra,
        }
    }

    fn auction(&self, i: u64, ts: i64, rng: &mut Rng) -> Auction {
        let id = last_base0_auction_id(i) + FIRST_AUCTION_ID;
        let seller = if rng.below(self.hot_sellers_ratio) > 0 {
            (last_base0_person_id(i) / HOT_BLOCK) * HOT_BLOCK
        } else {
            self.random_person(i, rng)
        } + FIRST_PERSON_ID;
        let category = FIRST_CATEGORY_ID + rng.below(NUM_CATEGORIES);
        let initial_bid = rng.price();
        // Up to twice the time until `num_in_flight_auctions` more auctions exist.
        let ahead = self.num_in_flight_auctions * TOTAL_PROPORTION / AUCTION_PROPORTION;
        let horizon = (self.timestamp(i + ahead) - ts).max(0) as u64;
        let expires = ts + 1 + rng.below((horizon * 2).max(1)) as i64;
        let item_name = rng.string(20);
        let description = rng.string(100);
        let reserve = initial_bid + rng.price();
        let size = 8 + item_name.len() + description.len() + 8 + 8 + 8 + 8 + 8;
        let extra = rng.extra(size, self.avg_auction_bytes);
        Auction {
            id,
            item_name,
            description,
            initial_bid,
            reserve,
            date_time: ts,
            expires,
            seller,
            category,
            extra,
        }
    }

    fn bid(&self, i: u64, ts: i64, rng: &mut Rng) -> Bid {
        let auction = if rng.below(self.hot_auction_ratio) > 0 {
            (last_base0_auction_id(i) / HOT_BLOCK) * HOT_BLOCK
        } else {
            self.random_auction(i, rng)
        } + FIRST_AUCTION_ID;
        let bidder = if rng.below(self.hot_bidders_ratio) > 0 {
            (last_base0_person_id(i) / HOT_BLOCK) * HOT_BLOCK + 1
        } else {
            self.random_person(i, rng)
        } + FIRST_PERSON_ID;
        let price = rng.price();
        let (channel, url) = if rng.below(2) > 0 {
            let k = rng.below(HOT_CHANNELS.len() as u64) as usize;
            (
                HOT_CHANNELS[k].to_owned(),
                channel_url(self.seed, k as u64, None),
            )
        } else {
            let n = rng.below(CHANNELS);
            (
                format!("channel-{n}"),
                channel_url(self.seed, n + HOT_CHANNELS.len() as u64, Some(n)),
            )
        };
        let extra = rng.extra(8 + 8 + 8 + 8, self.avg_bid_bytes);
        Bid {
            auction,
            bidder,
            price,
            channel,
            url,
            date_time: ts,
            extra,
        }
    }
}

/// A channel's URL: the same for every bid of the channel, like the
/// reference's cache of channels.
fn channel_url(seed: u64, channel: u64, id: Option<u64>) -> String {
    let mut rng = Rng::new(seed ^ 0xC4A7_7E15_0000_0000, channel);
    let mut url = format!(
        "https://www.nexmark.com/{}/{}/{}/item.htm?query=1",
        rng.string(5).replace(' ', "_"),
        rng.string(5).replace(' ', "_"),
        rng.string(5).replace(' ', "_")
    );
    if let Some(id) = id {
        url.push_str(&format!("&channel_id={}", (id as u32).reverse_bits()));
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_a_pure_function_of_their_index() {
        let g = GeneratorConfig::default();
        for i in [0, 1, 4, 5, 49, 50, 12_345] {
            assert_eq!(g.event(i), g.event(i), "event {i}");
        }
        let other = GeneratorConfig { seed: 1, ..g };
        assert_ne!(g.event(7), other.event(7));
    }

    #[test]
    fn the_mix_ids_and_times_follow_the_model() {
        let g = GeneratorConfig::default();
        let (mut people, mut auctions, mut bids) = (0u64, 0u64, 0u64);
        let mut last_ts = i64::MIN;
        for i in 0..5_000 {
            let e = g.event(i);
            assert!(e.date_time() >= last_ts, "event {i} earlier than {i}-1");
            last_ts = e.date_time();
            match e {
                Event::Person(p) => {
                    assert_eq!(p.id, FIRST_PERSON_ID + people, "person ids count up");
                    people += 1;
                }
                Event::Auction(a) => {
                    assert_eq!(a.id, FIRST_AUCTION_ID + auctions, "auction ids count up");
                    assert!((10..15).contains(&a.category));
                    assert!(a.expires > a.date_time && a.reserve >= a.initial_bid);
                    // Sellers exist or are at most the lead ahead.
                    assert!(a.seller < FIRST_PERSON_ID + people + PERSON_ID_LEAD);
                    auctions += 1;
                }
                Event::Bid(b) => {
                    assert!(b.auction >= FIRST_AUCTION_ID);
                    assert!(b.auction < FIRST_AUCTION_ID + auctions + AUCTION_ID_LEAD);
                    assert!((100..=100_000_000).contains(&b.price));
                    bids += 1;
                }
            }
        }
        assert_eq!((people, auctions, bids), (100, 300, 4_600));
        // 10 000 events per second of event time.
        assert_eq!(g.timestamp(10_000) - g.timestamp(0), 1_000);
    }

    #[test]
    fn most_bids_go_to_hot_auctions_and_bidders() {
        let g = GeneratorConfig::default();
        let mut hot_auction = 0;
        let mut hot_bidder = 0;
        let mut n = 0;
        for i in 0..50_000 {
            if let Event::Bid(b) = g.event(i) {
                n += 1;
                if (b.auction - FIRST_AUCTION_ID).is_multiple_of(HOT_BLOCK) {
                    hot_auction += 1;
                }
                if (b.bidder - FIRST_PERSON_ID) % HOT_BLOCK == 1 {
                    hot_bidder += 1;
                }
            }
        }
        // 1/2 hot auctions (plus random ones landing on a block start), 3/4 hot bidders.
        assert!(
            (0.48..0.56).contains(&(hot_auction as f64 / n as f64)),
            "{hot_auction}/{n}"
        );
        assert!(
            (0.73..0.78).contains(&(hot_bidder as f64 / n as f64)),
            "{hot_bidder}/{n}"
        );
    }

    #[test]
    fn extra_pads_events_to_their_average_size() {
        let g = GeneratorConfig::default();
        let (mut bytes, mut bids) = (0usize, 0usize);
        for i in 0..10_000 {
            if let Event::Bid(b) = g.event(i) {
                bytes += 32 + b.extra.len();
                bids += 1;
            }
        }
        let average = bytes / bids;
        assert!((95..=105).contains(&average), "{average}");
    }
}
