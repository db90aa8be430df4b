// Package spool owns everything spillway keeps on disk: the durable log of
// event blocks, per-destination cursors, and the dead-letter store.
//
// Guarantees:
//
//   - Append returns nil only once its events are durable as --sync asks:
//     fsynced (SyncAlways) or written to the operating system (SyncInterval).
//     Concurrent Appends share one block and one fsync (group commit).
//   - Every event gets a sequence number, increasing in append order. Each
//     consumer (destination) has a durable cursor: every event below it has
//     been acknowledged. After a restart a consumer reads again from its
//     cursor, so delivery is at-least-once.
//   - A block that fails its checksum or cannot be decoded is moved to the
//     dead-letter store with reason "corrupt"; reading goes on with the next.
//
// The spool knows nothing of HTTP or of any destination's protocol. The
// on-disk layout is described in FORMAT.md.
package spool
