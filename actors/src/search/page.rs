//! The page collector: the `limit` documents that follow a cursor in the index's stable order
//! (score descending, then id ascending; without `q` every score is 0, so id ascending), kept
//! in a bounded heap while tantivy walks the matches.
//!
//! Why not `TopDocs::tweak_score`: that reads both id columns and builds a sort key for every
//! match, and keeps scoring on for filter-only queries. Here an unranked query runs with
//! scoring off, and a match is dropped as soon as its score, then the high half of its id,
//! shows it cannot enter the page — most matches never read the low half.

use std::{cmp::Ordering, collections::BinaryHeap, sync::Arc};

use tantivy::{
    collector::{Collector, SegmentCollector},
    columnar::{ColumnIndex, ColumnValues},
    DocAddress, DocId, Score, SegmentOrdinal, SegmentReader,
};

use super::Cursor;

/// One match and its place in the result order.
#[derive(Debug, Clone, Copy)]
pub(super) struct Hit {
    pub score: Score,
    pub id: u128,
    pub address: DocAddress,
}

impl Hit {
    /// Result order: `Less` is earlier (higher score, then lower id). A max-heap of hits
    /// therefore has the page's last hit on top.
    fn order(&self, score: Score, id: u128) -> Ordering {
        score.total_cmp(&self.score).then(self.id.cmp(&id))
    }
}

impl PartialEq for Hit {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Hit {}

impl PartialOrd for Hit {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Hit {
    fn cmp(&self, other: &Self) -> Ordering {
        self.order(other.score, other.id)
    }
}

/// Collects the page after `cursor`: at most `limit` hits, in result order.
pub(super) struct PageCollector {
    pub ranked: bool,
    pub cursor: Option<Cursor>,
    pub limit: usize,
}

impl Collector for PageCollector {
    type Fruit = Vec<Hit>;
    type Child = PageSegmentCollector;

    fn for_segment(
        &self,
        segment: SegmentOrdinal,
        reader: &SegmentReader,
    ) -> tantivy::Result<PageSegmentCollector> {
        let fast = reader.fast_fields();
        // Every document has both ids, so the columns are full: read the values directly
        // instead of through the optional-value index (a third of the collector's cost).
        let values = |name: &str| -> tantivy::Result<Arc<dyn ColumnValues<u64>>> {
            let column = fast.u64(name)?;
            Ok(match column.index {
                ColumnIndex::Full => column.values,
                _ => column.first_or_default_col(0),
            })
        };
        Ok(PageSegmentCollector {
            segment,
            hi: values("id_hi")?,
            lo: values("id_lo")?,
            ranked: self.ranked,
            cursor: self.cursor,
            limit: self.limit,
            heap: BinaryHeap::with_capacity(self.limit + 1),
        })
    }

    fn requires_scoring(&self) -> bool {
        self.ranked
    }

    fn merge_fruits(&self, segments: Vec<Vec<Hit>>) -> tantivy::Result<Vec<Hit>> {
        let mut hits: Vec<Hit> = segments.into_iter().flatten().collect();
        hits.sort_unstable();
        hits.truncate(self.limit);
        Ok(hits)
    }
}

pub(super) struct PageSegmentCollector {
    segment: SegmentOrdinal,
    hi: Arc<dyn ColumnValues<u64>>,
    lo: Arc<dyn ColumnValues<u64>>,
    ranked: bool,
    cursor: Option<Cursor>,
    limit: usize,
    /// The best hits so far; the worst of them on top.
    heap: BinaryHeap<Hit>,
}

impl SegmentCollector for PageSegmentCollector {
    type Fruit = Vec<Hit>;

    fn collect(&mut self, doc: DocId, score: Score) {
        let score = if self.ranked { score } else { 0.0 };
        let worst = (self.heap.len() >= self.limit)
            .then(|| self.heap.peek().copied())
            .flatten();
        // Cheapest first: the score alone places most matches before the cursor or after
        // the page's current end.
        if self.cursor.is_some_and(|cursor| score > cursor.score)
            || worst.is_some_and(|worst| score < worst.score)
        {
            return;
        }
        let hi = self.hi.get_val(doc);
        let high = |id: u128| (id >> 64) as u64;
        if self
            .cursor
            .is_some_and(|cursor| score == cursor.score && hi < high(cursor.id))
            || worst.is_some_and(|worst| score == worst.score && hi > high(worst.id))
        {
            return;
        }
        let id = (u128::from(hi) << 64) | u128::from(self.lo.get_val(doc));
        let hit = Hit {
            score,
            id,
            address: DocAddress::new(self.segment, doc),
        };
        // Only what sorts strictly after the cursor: the previous pages held the rest.
        if let Some(cursor) = self.cursor {
            let cursor = Hit {
                score: cursor.score,
                id: cursor.id,
                address: hit.address,
            };
            if hit <= cursor {
                return;
            }
        }
        match worst {
            None => self.heap.push(hit),
            Some(worst) if hit < worst => {
                if let Some(mut top) = self.heap.peek_mut() {
                    *top = hit;
                }
            }
            Some(_) => {}
        }
    }

    fn harvest(self) -> Vec<Hit> {
        self.heap.into_vec()
    }
}
