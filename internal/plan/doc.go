// Package plan loads tracking plans and checks events against them: the
// file is JSON in the shape Segment's Public API exports a plan's rules,
// each rule's jsonSchema (draft 7 or 2020-12) validating the whole event.
// What a violation leads to (flagged, dead-lettered) is the caller's.
//
// A violation's description never quotes the event's values, only the
// plan's: it travels with the event (context.violations) and into logs,
// where the privacy rules applied to the event do not reach.
//
// It imports nothing of spillway's but internal/segment, so that the proxy
// and cmd use it without bending the dependencies.
package plan
