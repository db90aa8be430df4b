// Package sources owns what spillway takes events from besides HTTP: today
// a Kafka topic written by spillway's Kafka destination, consumed as a
// member of a consumer group (--source kafka://BROKERS/TOPIC?group=NAME),
// which makes spillway a relay: a fleet of them, scaled by Kafka's
// partitions, behind the sidecars.
//
// It stores what it takes in the spool as the proxy stores what it is
// sent, and knows the spool only through its Store interface. Guarantees:
//
//   - Nothing acknowledged to Kafka that is not durable. A partition's
//     offset is marked for commit only once the spool reported durable every
//     record below it; commits carry marked offsets only (every second, when
//     partitions are revoked, and at Stop). A relay killed at any moment
//     leaves the group at its committed offsets, and whoever takes its
//     partitions reads again what it had not committed: duplicates, never
//     loss. messageId is the key to remove them.
//   - A full spool stops fetching. With --when-full=block the source waits,
//     its topic paused, until the spool takes events again; records polled
//     when the spool turned full are rewound, not held, so that a rebalance
//     meanwhile is never blocked.
//   - Order per partition while a relay owns it: a poll is handed to the
//     spool in chunks, in the order of its partitions. One exception: when
//     a chunk fails once taken (a commit that failed) and the next one was
//     stored, the records from the failed one on are fetched and stored
//     again, after the next one's.
//   - Bad records are kept, not dropped: a value that is not a JSON object
//     becomes a dead letter with reason invalid, counted.
package sources
