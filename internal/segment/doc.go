// Package segment holds the facts of Segment's HTTP Tracking API that both
// ends of spillway rely on: the proxy, which takes events as the SDKs send
// them, and the forwarders, which send them on to Segment-compatible APIs.
//
//   - the event types and the endpoints that take them, analytics.js's
//     short paths included;
//   - the spec's rules: which fields each type requires;
//   - the names of the event fields spillway reads or writes;
//   - the wire format of times.
//
// It imports nothing of spillway's, so that any package may import it
// without bending the dependencies (cmd -> proxy, forwarders -> spool).
package segment
