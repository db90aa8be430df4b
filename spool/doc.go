// Package spool owns everything spillway keeps on disk: the durable log of
// event blocks, per-destination cursors, and the dead-letter store.
//
// Guarantees:
//
//   - Append returns nil only once its events are durable as --sync asks:
//     fsynced (SyncAlways) or written to the operating system (SyncInterval).
//     Concurrent Appends share one transaction and one fsync (group commit).
//   - Every event gets a sequence number, increasing in append order. Each
//     consumer (destination) has a cursor: every event below it has been
//     acknowledged. Cursors are saved every 100 ms and at Close; after a
//     restart a consumer reads again from its saved cursor, so delivery is
//     at-least-once and a crash re-sends at most what was in flight plus
//     100 ms of acknowledgements.
//   - Space comes back a whole generation at a time, once every consumer
//     has passed it. Beyond Config.MaxBytes, Append answers ErrFull, or the
//     oldest generation is dropped and counted (DropOldest).
//   - A block that fails its checksum or cannot be decoded is quarantined to
//     the dead-letter store with reason "corrupt"; reading goes on with the
//     next. A generation that cannot be opened stops Open with its name.
//
// The spool knows nothing of HTTP or of any destination's protocol. The
// on-disk layout is described in FORMAT.md.
package spool
