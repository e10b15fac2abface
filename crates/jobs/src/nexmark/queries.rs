//! The Nexmark queries as DataStream jobs over a stream of [`Event`]s, each
//! ending in a stream of [`Row`]s with the rows of the Flink SQL query of the
//! same name (`../shared/anchors/flink/nexmark.py`; docs/nexmark.md says what
//! each computes and where the DataStream form differs in how, not what).
//!
//! Owns the queries' operators and state; the source and the checksum and
//! sink stages are `nexmark::build`'s.

use std::time::Duration;

use flowstate::{
    DataStream, EventTimeSessionWindows, FnResult, KeyedContext, KeyedProcessFunction,
    KeyedStateBackend, SlidingEventTimeWindows, TimeDomain, TimeWindow, ValueStateDescriptor,
    ValueStateHandle, WindowAggregateFunction,
};

use crate::nexmark::json::Fields;
use crate::nexmark::model::{Bid, Event};
use crate::nexmark::rows::Row;

/// The queries this module builds.
pub const QUERIES: [&str; 9] = ["q0", "q1", "q2", "q3", "q4", "q5", "q7", "q8", "q11"];

/// q2 keeps bids of auctions whose id is a multiple of this.
pub const Q2_AUCTION_SKIP: u64 = 123;
/// q1's dollar-to-euro rate, in thousandths.
pub const Q1_RATE_MILLI: u64 = 908;
/// q3's category and states.
pub const Q3_CATEGORY: u64 = 10;
pub const Q3_STATES: [&str; 3] = ["OR", "ID", "CA"];
/// q5's sliding window: 10 s every 2 s.
pub const Q5_SIZE_MS: i64 = 10_000;
pub const Q5_SLIDE_MS: i64 = 2_000;
/// q7's and q8's tumbling window.
pub const WINDOW_MS: i64 = 10_000;
/// q11's session gap.
pub const Q11_GAP_MS: i64 = 10_000;

/// The text fields of the events `query` reads (the others may be left
/// empty by the source); everything for a query this module does not know.
pub fn fields(query: &str) -> Fields {
    match query {
        "q0" | "q1" | "q7" => Fields::BID_EXTRA,
        "q2" | "q4" | "q5" | "q11" => Fields::NONE,
        "q3" => Fields::PERSON_NAME
            .with(Fields::PERSON_CITY)
            .with(Fields::PERSON_STATE),
        "q8" => Fields::PERSON_NAME,
        _ => Fields::ALL,
    }
}

/// `query`'s rows over `events`; `None` for a query this module does not know.
pub fn build(query: &str, events: &DataStream<Event>) -> Option<DataStream<Row>> {
    Some(match query {
        "q0" => events
            .flat_map(|e| match e {
                Event::Bid(b) => Some(Row::Q0 {
                    auction: b.auction,
                    bidder: b.bidder,
                    price: b.price,
                    date_time: b.date_time,
                    extra: b.extra,
                }),
                _ => None,
            })
            .name("q0: pass-through"),
        "q1" => events
            .flat_map(|e| match e {
                Event::Bid(b) => Some(Row::Q1 {
                    auction: b.auction,
                    bidder: b.bidder,
                    price_milli: b.price * Q1_RATE_MILLI,
                    date_time: b.date_time,
                    extra: b.extra,
                }),
                _ => None,
            })
            .name("q1: currency conversion"),
        "q2" => events
            .flat_map(|e| match e {
                Event::Bid(b) if b.auction % Q2_AUCTION_SKIP == 0 => Some(Row::Q2 {
                    auction: b.auction,
                    price: b.price,
                }),
                _ => None,
            })
            .name("q2: selection"),
        "q3" => events
            .filter(|e| match e {
                Event::Person(p) => Q3_STATES.contains(&p.state.as_str()),
                Event::Auction(a) => a.category == Q3_CATEGORY,
                Event::Bid(_) => false,
            })
            .key_by(|e: &Event| match e {
                Event::Person(p) => p.id,
                Event::Auction(a) => a.seller,
                Event::Bid(b) => b.bidder,
            })
            .process(Q3Join::default())
            .name("q3: persons ⋈ auctions")
            .uid("q3-join"),
        "q4" => events
            .filter(|e| !matches!(e, Event::Person(_)))
            .key_by(|e: &Event| match e {
                Event::Auction(a) => a.id,
                Event::Bid(b) => b.auction,
                Event::Person(p) => p.id,
            })
            .process(Q4Winning::default())
            .name("q4: winning bid per auction")
            .uid("q4-winning")
            .key_by(|(category, _): &(u64, u64)| *category)
            .process(Q4Average::default())
            .name("q4: average per category")
            .uid("q4-average"),
        "q5" => bids(events)
            .key_by(|b: &Bid| b.auction)
            .window_by(
                SlidingEventTimeWindows::of(ms(Q5_SIZE_MS), ms(Q5_SLIDE_MS)),
                |b: &Bid| b.date_time,
            )
            .aggregate_with(Count, |auction, window: &TimeWindow, num| {
                (window.max_timestamp(), *auction, num)
            })
            .name("q5: bids per auction and window")
            .uid("q5-count")
            .key_by(|(window_last, _, _): &(i64, u64, u64)| *window_last)
            .process(Q5Hottest::default())
            .name("q5: hottest auctions per window")
            .uid("q5-hottest"),
        "q7" => bids(events)
            .flat_map(|b| {
                // Its own window; a bid on a window's first millisecond is
                // also `BETWEEN` the previous window's bounds.
                let start = b.date_time - b.date_time.rem_euclid(WINDOW_MS);
                let previous = (b.date_time == start).then(|| (start - WINDOW_MS, true, b.clone()));
                std::iter::once((start, false, b)).chain(previous)
            })
            .key_by(|(start, _, _): &(i64, bool, Bid)| *start)
            .process(Q7Highest::default())
            .name("q7: highest bids per window")
            .uid("q7-highest"),
        "q8" => events
            .filter(|e| !matches!(e, Event::Bid(_)))
            .key_by(|e: &Event| match e {
                Event::Person(p) => p.id,
                Event::Auction(a) => a.seller,
                Event::Bid(b) => b.bidder,
            })
            .process(Q8NewUsers::default())
            .name("q8: new sellers per window")
            .uid("q8-join"),
        "q11" => bids(events)
            .key_by(|b: &Bid| b.bidder)
            .window_by(
                EventTimeSessionWindows::with_gap(ms(Q11_GAP_MS)),
                |b: &Bid| b.date_time,
            )
            .aggregate_with(Count, |bidder, window: &TimeWindow, bid_count| Row::Q11 {
                bidder: *bidder,
                bid_count,
                start: window.start,
                end: window.end,
            })
            .name("q11: bids per session")
            .uid("q11-sessions"),
        _ => return None,
    })
}

fn ms(ms: i64) -> Duration {
    Duration::from_millis(ms.unsigned_abs())
}

fn bids(events: &DataStream<Event>) -> DataStream<Bid> {
    events.flat_map(|e| match e {
        Event::Bid(b) => Some(b),
        _ => None,
    })
}

/// Counts a window's records.
#[derive(Clone, Copy)]
struct Count;

impl<T> WindowAggregateFunction<T, u64, u64> for Count {
    fn create_accumulator(&self) -> u64 {
        0
    }
    #[inline]
    fn add(&self, accumulator: &mut u64, _input: T) {
        *accumulator += 1;
    }
    fn merge(&self, accumulator: &mut u64, other: u64) {
        *accumulator += other;
    }
    fn result(&self, accumulator: &u64) -> u64 {
        *accumulator
    }
}

fn declared<V: flowstate::StateValue>(
    handle: &Option<ValueStateHandle<V>>,
) -> Result<&ValueStateHandle<V>, flowstate::UserError> {
    handle
        .as_ref()
        .ok_or_else(|| "state used before open".into())
}

/// q3, keyed by person id: the person (if in one of the states) and the
/// auctions (of the category) seen before it; every pair is emitted once,
/// when its second half arrives.
#[derive(Clone, Default)]
struct Q3Join {
    /// `(name, city, state)`.
    person: Option<ValueStateHandle<(String, String, String)>>,
    /// Auction ids waiting for their seller.
    waiting: Option<ValueStateHandle<Vec<u64>>>,
}

impl KeyedProcessFunction<u64, Event, Row> for Q3Join {
    fn open(&mut self, state: &mut dyn KeyedStateBackend<u64>) -> FnResult {
        self.person = Some(state.value_state(&ValueStateDescriptor::new("q3-person"))?);
        self.waiting = Some(state.value_state(&ValueStateDescriptor::new("q3-auctions"))?);
        Ok(())
    }

    fn process(
        &mut self,
        event: Event,
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Vec<Row>,
    ) -> FnResult {
        let (person, waiting) = (declared(&self.person)?, declared(&self.waiting)?);
        match event {
            Event::Person(p) => {
                for id in ctx.value(waiting).clear()?.unwrap_or_default() {
                    out.push(Row::Q3 {
                        name: p.name.clone(),
                        city: p.city.clone(),
                        state: p.state.clone(),
                        id,
                    });
                }
                ctx.value(person).set((p.name, p.city, p.state))?;
            }
            Event::Auction(a) => match ctx.value(person).get()? {
                Some((name, city, state)) => out.push(Row::Q3 {
                    name: name.clone(),
                    city: city.clone(),
                    state: state.clone(),
                    id: a.id,
                }),
                None => ctx.value(waiting).modify(Vec::new, |w| w.push(a.id))?,
            },
            Event::Bid(_) => {}
        }
        Ok(())
    }
}

/// An auction's part of q4: `(date_time, expires, category, highest price
/// so far, closed)`.
type AuctionState = (i64, i64, u64, Option<u64>, bool);

/// q4's first stage, keyed by auction id: the highest bid with a time within
/// the auction's `[dateTime, expires]`, emitted as `(category, price)` when
/// the watermark passes `expires` (no bid inside can arrive after that).
/// Bids that arrive before their auction wait for it.
#[derive(Clone, Default)]
struct Q4Winning {
    auction: Option<ValueStateHandle<AuctionState>>,
    /// `(date_time, price)` of bids that arrived before their auction.
    early: Option<ValueStateHandle<Vec<(i64, u64)>>>,
}

impl KeyedProcessFunction<u64, Event, (u64, u64)> for Q4Winning {
    fn open(&mut self, state: &mut dyn KeyedStateBackend<u64>) -> FnResult {
        self.auction = Some(state.value_state(&ValueStateDescriptor::new("q4-auction"))?);
        self.early = Some(state.value_state(&ValueStateDescriptor::new("q4-early-bids"))?);
        Ok(())
    }

    fn process(
        &mut self,
        event: Event,
        ctx: &mut KeyedContext<'_, u64>,
        _out: &mut Vec<(u64, u64)>,
    ) -> FnResult {
        let (auction, early) = (declared(&self.auction)?, declared(&self.early)?);
        match event {
            Event::Auction(a) => {
                let bids = ctx.value(early).clear()?.unwrap_or_default();
                let highest = bids
                    .iter()
                    .filter(|(t, _)| (a.date_time..=a.expires).contains(t))
                    .map(|&(_, p)| p)
                    .max();
                ctx.value(auction)
                    .set((a.date_time, a.expires, a.category, highest, false))?;
                ctx.register_event_time_timer(a.expires)?;
            }
            Event::Bid(b) => {
                let known = ctx.value(auction).update(|s| {
                    s.map(|(start, end, category, highest, closed)| {
                        let inside = !closed && (start..=end).contains(&b.date_time);
                        let highest = match highest {
                            Some(h) if inside => Some(h.max(b.price)),
                            None if inside => Some(b.price),
                            h => h,
                        };
                        (start, end, category, highest, closed)
                    })
                })?;
                if known.is_none() {
                    ctx.value(early)
                        .modify(Vec::new, |w| w.push((b.date_time, b.price)))?;
                }
            }
            Event::Person(_) => {}
        }
        Ok(())
    }

    fn on_timer(
        &mut self,
        _timestamp: i64,
        _domain: TimeDomain,
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Vec<(u64, u64)>,
    ) -> FnResult {
        let auction = declared(&self.auction)?;
        // Closed: later bids are outside its interval; keep a tombstone so
        // they are not held as early bids.
        let mut winner = None;
        ctx.value(auction).update(|s| {
            s.map(|(start, end, category, highest, _)| {
                winner = highest.map(|h| (category, h));
                (start, end, category, None, true)
            })
        })?;
        out.extend(winner);
        Ok(())
    }
}

/// q4's second stage, keyed by category: the sum and number of winning
/// prices; at the end of the input, `category,avg` (the final value of
/// Flink's updating `AVG`). Emitted by an event-time timer at the end of
/// time, which fires on the source's final `Watermark::MAX`, before the
/// final checkpoint (so the rows are in it, and a restore of it does not
/// emit them again, as `finish` would).
#[derive(Clone, Default)]
struct Q4Average {
    sum_count: Option<ValueStateHandle<(u64, u64)>>,
}

impl KeyedProcessFunction<u64, (u64, u64), Row> for Q4Average {
    fn open(&mut self, state: &mut dyn KeyedStateBackend<u64>) -> FnResult {
        self.sum_count = Some(state.value_state(&ValueStateDescriptor::new("q4-sum-count"))?);
        Ok(())
    }

    fn process(
        &mut self,
        (_, price): (u64, u64),
        ctx: &mut KeyedContext<'_, u64>,
        _out: &mut Vec<Row>,
    ) -> FnResult {
        let handle = declared(&self.sum_count)?;
        let first = ctx.value(handle).modify(
            || (0, 0),
            |(sum, count)| {
                *sum += price;
                *count += 1;
                *count == 1
            },
        )?;
        if first {
            ctx.register_event_time_timer(i64::MAX)?;
        }
        Ok(())
    }

    fn on_timer(
        &mut self,
        _timestamp: i64,
        _domain: TimeDomain,
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Vec<Row>,
    ) -> FnResult {
        let handle = declared(&self.sum_count)?;
        let category = *ctx.key();
        if let Some((sum, count)) = ctx.value(handle).clear()? {
            out.push(Row::Q4 {
                category,
                avg_final: sum / count.max(1),
            });
        }
        Ok(())
    }
}

/// q5's second stage, keyed by a window's last millisecond: the auctions
/// with the most bids in it (ties: all), emitted when the watermark reaches
/// it (after every count of the window arrived).
#[derive(Clone, Default)]
struct Q5Hottest {
    /// `(highest count, auctions with it)`.
    hottest: Option<ValueStateHandle<(u64, Vec<u64>)>>,
}

impl KeyedProcessFunction<i64, (i64, u64, u64), Row> for Q5Hottest {
    fn open(&mut self, state: &mut dyn KeyedStateBackend<i64>) -> FnResult {
        self.hottest = Some(state.value_state(&ValueStateDescriptor::new("q5-hottest"))?);
        Ok(())
    }

    fn process(
        &mut self,
        (window_last, auction, num): (i64, u64, u64),
        ctx: &mut KeyedContext<'_, i64>,
        _out: &mut Vec<Row>,
    ) -> FnResult {
        let handle = declared(&self.hottest)?;
        let first = ctx.value(handle).modify(
            || (0, Vec::new()),
            |(max, auctions)| {
                let first = auctions.is_empty();
                if num > *max {
                    *max = num;
                    auctions.clear();
                }
                if num == *max {
                    auctions.push(auction);
                }
                first
            },
        )?;
        if first {
            ctx.register_event_time_timer(window_last)?;
        }
        Ok(())
    }

    fn on_timer(
        &mut self,
        _timestamp: i64,
        _domain: TimeDomain,
        ctx: &mut KeyedContext<'_, i64>,
        out: &mut Vec<Row>,
    ) -> FnResult {
        let handle = declared(&self.hottest)?;
        if let Some((num, auctions)) = ctx.value(handle).clear()? {
            out.extend(auctions.into_iter().map(|auction| Row::Q5 { auction, num }));
        }
        Ok(())
    }
}

/// A bid as q7 keeps it: `(auction, price, bidder, date_time, extra)`.
type KeptBid = (u64, u64, u64, i64, String);

fn kept(b: Bid) -> KeptBid {
    (b.auction, b.price, b.bidder, b.date_time, b.extra)
}

/// q7, keyed by a 10 s window's start: the highest price of the window's
/// bids and the bids with it, plus the bids at exactly the window's end
/// (`BETWEEN` includes them); at the end of the window (watermark at its end
/// millisecond, so those have arrived too), every one of them with the
/// highest price.
#[derive(Clone, Default)]
struct Q7Highest {
    /// `(highest price, the window's bids with it)`.
    highest: Option<ValueStateHandle<(u64, Vec<KeptBid>)>>,
    /// Bids on the first millisecond of the next window.
    at_end: Option<ValueStateHandle<Vec<KeptBid>>>,
}

impl KeyedProcessFunction<i64, (i64, bool, Bid), Row> for Q7Highest {
    fn open(&mut self, state: &mut dyn KeyedStateBackend<i64>) -> FnResult {
        self.highest = Some(state.value_state(&ValueStateDescriptor::new("q7-highest"))?);
        self.at_end = Some(state.value_state(&ValueStateDescriptor::new("q7-at-end"))?);
        Ok(())
    }

    fn process(
        &mut self,
        (start, at_end, bid): (i64, bool, Bid),
        ctx: &mut KeyedContext<'_, i64>,
        _out: &mut Vec<Row>,
    ) -> FnResult {
        let (highest, end) = (declared(&self.highest)?, declared(&self.at_end)?);
        if at_end {
            // Only a candidate if the window has bids of its own (checked
            // when it fires); bounded by the bids of one millisecond.
            ctx.value(end).modify(Vec::new, |v| v.push(kept(bid)))?;
            return Ok(());
        }
        let price = bid.price;
        let first = ctx.value(highest).modify(
            || (0, Vec::new()),
            |(max, bids)| {
                let first = bids.is_empty();
                if price > *max {
                    *max = price;
                    bids.clear();
                }
                if price == *max {
                    bids.push(kept(bid));
                }
                first
            },
        )?;
        if first {
            ctx.register_event_time_timer(start + WINDOW_MS)?;
        }
        Ok(())
    }

    fn on_timer(
        &mut self,
        _timestamp: i64,
        _domain: TimeDomain,
        ctx: &mut KeyedContext<'_, i64>,
        out: &mut Vec<Row>,
    ) -> FnResult {
        let (highest, end) = (declared(&self.highest)?, declared(&self.at_end)?);
        let late = ctx.value(end).clear()?.unwrap_or_default();
        let Some((max, bids)) = ctx.value(highest).clear()? else {
            return Ok(());
        };
        let row = |(auction, price, bidder, date_time, extra): KeptBid| Row::Q7 {
            auction,
            price,
            bidder,
            date_time,
            extra,
        };
        out.extend(bids.into_iter().map(row));
        out.extend(late.into_iter().filter(|b| b.1 == max).map(row));
        Ok(())
    }
}

/// q8, keyed by person id: a person and the 10 s windows in which they
/// opened auctions; `id,name,window_start` once, when a person created in a
/// window is known to have opened an auction in the same window.
#[derive(Clone, Default)]
struct Q8NewUsers {
    /// `(name and window of the person, windows of their auctions seen
    /// before the person, emitted)`.
    state: Option<ValueStateHandle<Q8State>>,
}

type Q8State = (Option<(String, i64)>, Vec<i64>, bool);

impl KeyedProcessFunction<u64, Event, Row> for Q8NewUsers {
    fn open(&mut self, state: &mut dyn KeyedStateBackend<u64>) -> FnResult {
        self.state = Some(state.value_state(&ValueStateDescriptor::new("q8-person"))?);
        Ok(())
    }

    fn process(
        &mut self,
        event: Event,
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Vec<Row>,
    ) -> FnResult {
        let handle = declared(&self.state)?;
        let id = *ctx.key();
        let window = |t: i64| t - t.rem_euclid(WINDOW_MS);
        ctx.value(handle).modify(
            || (None, Vec::new(), false),
            |(person, windows, emitted)| {
                if *emitted {
                    return;
                }
                match event {
                    Event::Person(p) => {
                        let start = window(p.date_time);
                        if windows.contains(&start) {
                            out.push(Row::Q8 {
                                id,
                                name: p.name.clone(),
                                start,
                            });
                            *emitted = true;
                            windows.clear();
                        }
                        *person = Some((p.name, start));
                    }
                    Event::Auction(a) => {
                        let start = window(a.date_time);
                        match person {
                            Some((name, person_start)) if *person_start == start => {
                                out.push(Row::Q8 {
                                    id,
                                    name: name.clone(),
                                    start,
                                });
                                *emitted = true;
                            }
                            Some(_) => {}
                            None if !windows.contains(&start) => windows.push(start),
                            None => {}
                        }
                    }
                    Event::Bid(_) => {}
                }
            },
        )?;
        Ok(())
    }
}
