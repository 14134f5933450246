//! The spool's size bound (see the module docs of [`super`]): when appending would take it
//! over `max_bytes`, whole oldest segments go, and the events they held that had not been
//! acknowledged (nor handed to the shipper) are counted as lost and reported by one `dropped`
//! event in the next append. Counts are in accesses, so shipped plus dropped counts always
//! equal the number of reads.

use std::fs;
use std::sync::atomic::Ordering;

use super::disk::for_each_event;
use super::{Spool, SpoolError, io_err};
use crate::api::{AccessAction, AccessEvent};

impl Spool {
    /// Counts events that could not be written as dropped (reported by the next append).
    pub(super) fn lose(&mut self, events: impl IntoIterator<Item = AccessEvent>) {
        for e in events {
            if e.action != AccessAction::Dropped {
                self.counters
                    .dropped_total
                    .fetch_add(e.count, Ordering::Relaxed);
            }
            self.pending_dropped += e.count;
        }
        self.publish_pending_dropped();
    }

    /// Drops whole oldest segments (never the open one) until `need` more bytes fit.
    pub(super) fn make_room(&mut self, need: u64) -> Result<(), SpoolError> {
        let keep = usize::from(self.active.is_some());
        while self.total_bytes + need > self.limits.max_bytes && self.segments.len() > keep {
            self.drop_oldest()?;
        }
        Ok(())
    }

    fn drop_oldest(&mut self) -> Result<(), SpoolError> {
        let seg = self.segments.pop_front().expect("a segment to drop");
        let floor = self.acked.max(self.inflight.map_or(0, |(_, last, _)| last));
        let (mut records, mut carried, mut lost) = (0u64, 0u64, 0u64);
        // An unreadable segment still goes: its contents are then uncounted (logged below).
        let read = for_each_event(&seg.path, |ev| {
            if ev.seq > floor {
                records += 1;
                carried += ev.count;
                if ev.action != AccessAction::Dropped {
                    lost += ev.count;
                }
            }
        });
        if let Err(e) = read {
            tracing::error!(error = %e, "audit spool: cannot read a segment being dropped");
        }
        fs::remove_file(&seg.path).map_err(io_err("remove", &seg.path))?;
        self.total_bytes -= seg.bytes;
        self.backlog = self.backlog.saturating_sub(records);
        self.pending_dropped += carried;
        self.publish_pending_dropped();
        self.counters
            .dropped_total
            .fetch_add(lost, Ordering::Relaxed);
        if self.cursor.is_some_and(|c| c.segment == seg.id) {
            self.cursor = None;
        }
        tracing::warn!(
            records,
            accesses = lost,
            first_seq = seg.first_seq,
            last_seq = seg.last_seq,
            "audit spool full: dropped the oldest segment"
        );
        self.publish();
        Ok(())
    }
}
