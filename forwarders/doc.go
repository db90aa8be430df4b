// Package forwarders owns delivery: one independent Dispatcher per
// destination reads the spool through the destination's own cursor, forms
// batches (by events, bytes and flush interval), encodes them for the
// destination's kind, sends, classifies the answer, retries, dead-letters,
// and acknowledges back to the spool.
//
// The kinds live side by side in this package and are picked by the URL
// scheme of --destination NAME=URL: segment+https:// (segment.go), http(s)://
// webhooks (webhook.go), kafka:// (kafka.go, kafka_options.go), stdout://
// and file:// (stdout.go). They share one delivery loop: a Dispatcher
// (dispatcher.go) reads, batches and acknowledges in loop.go, delivers
// each batch to the end in deliver.go, learns what an answer means in
// classify.go, waits out a failing destination in gate.go, and expires and
// dead-letters in deadletter.go, and gives each refused write key a lane
// of its own in lanes.go. config.go parses a destination, and
// settings.go holds the numeric options' defaults and ranges.
//
// The s3:// archive (archive.go, archive_s3.go) is the exception to the
// shared loop: archive_loop.go cuts objects by sequence range, records
// each range in the spool before its upload and confirms it after, so
// that each event is exactly once in the bucket; it shares the gate and
// the classification of answers. archive_fallback.go hands a destination's
// undelivered events to its ?fallback= archive at the end of the drain.
//
// Guarantees:
//
//   - At least once. A batch is acknowledged only once each of its events
//     is delivered, filtered out by routing, or safely in the dead-letter
//     store, and only as part of the contiguous prefix of finished batches:
//     after a crash or restart nothing acknowledged is sent again, and
//     everything not acknowledged is. Duplicates are possible (a send that
//     succeeded but was cut short, a restart); messageId is the key to
//     remove them.
//   - Nothing vanishes. Events a destination refuses (400, 413, 422) are
//     isolated by halving the batch and moved to the dead-letter store with
//     the answer; the others of the batch are delivered. Events not
//     delivered within max_age go there with reason "expired".
//   - Isolation. Destinations share nothing but the spool: each has its own
//     goroutines, HTTP connections and backoff, so a slow, dead or refusing
//     destination never delays another. Within a destination that
//     delivers per write key, a key the destination refuses (401, 429,
//     5xx...) waits in a lane of its own, parked in the spool, and the
//     other keys keep flowing (lanes.go).
//   - No hammering. A destination that fails (network, timeout, 408, 429,
//     5xx) gets one probe at a time, after exponential backoff with full
//     jitter that honours Retry-After; its other batches wait, and the
//     first success resumes full concurrency. A misconfigured one (401,
//     403, 404) is probed every backoff_max and never dead-lettered for it.
//
// Logs are one line per change of a destination's state, never one per
// event; write keys never appear in logs, errors or metrics labels.
package forwarders
