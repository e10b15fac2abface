//! Nexmark's three event types (an online auction: people, auctions, bids)
//! with the field names of the reference benchmark (camelCase in JSON, times
//! as epoch milliseconds), and the union [`Event`] the queries read.
//!
//! Owns the data model and its JSON form only; how events are made is
//! `generator`'s, what the queries compute is `queries`'.

use serde::{Deserialize, Serialize};

/// A person: someone who sells or bids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Person {
    pub id: u64,
    pub name: String,
    pub email_address: String,
    pub credit_card: String,
    pub city: String,
    pub state: String,
    /// Event time, ms since the Unix epoch.
    pub date_time: i64,
    pub extra: String,
}

/// An auction: an item for sale until `expires`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Auction {
    pub id: u64,
    pub item_name: String,
    pub description: String,
    pub initial_bid: u64,
    pub reserve: u64,
    /// Event time, ms since the Unix epoch.
    pub date_time: i64,
    /// When the auction closes, ms since the Unix epoch.
    pub expires: i64,
    pub seller: u64,
    pub category: u64,
    pub extra: String,
}

/// A bid on an auction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bid {
    pub auction: u64,
    pub bidder: u64,
    pub price: u64,
    pub channel: String,
    pub url: String,
    /// Event time, ms since the Unix epoch.
    pub date_time: i64,
    pub extra: String,
}

/// One Nexmark event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    Person(Person),
    Auction(Auction),
    Bid(Bid),
}

impl Event {
    /// The event's time (ms since the Unix epoch).
    #[inline]
    pub fn date_time(&self) -> i64 {
        match self {
            Event::Person(p) => p.date_time,
            Event::Auction(a) => a.date_time,
            Event::Bid(b) => b.date_time,
        }
    }

    /// The directory of its type in a Nexmark folder: `person`, `auction` or `bid`.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Person(_) => "person",
            Event::Auction(_) => "auction",
            Event::Bid(_) => "bid",
        }
    }

    /// The event as one JSON object (Nexmark's field names).
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        match self {
            Event::Person(p) => serde_json::to_string(p),
            Event::Auction(a) => serde_json::to_string(a),
            Event::Bid(b) => serde_json::to_string(b),
        }
    }
}
