package spool

import (
	"encoding/json"
	"errors"
	"time"
)

var (
	// ErrFull is returned by Append when the spool has reached its size
	// bound (--spool-max-bytes) or the disk is full. The caller should ask
	// its client to retry later; nothing of the rejected call was stored.
	ErrFull = errors.New("spool: full")
	// ErrClosed is returned by every method once Close has begun.
	ErrClosed = errors.New("spool: closed")
	// ErrUnknownConsumer is returned for a consumer name not given in
	// Config.Consumers.
	ErrUnknownConsumer = errors.New("spool: unknown consumer")
)

// Event is one event to append.
type Event struct {
	// WriteKey travels with the event so that an upstream can receive it
	// under the key it came with. The spool treats it as opaque.
	WriteKey string
	// Dest, when not empty, restricts the event to the consumer of that
	// name; every other consumer skips it. Replayed dead letters use it.
	Dest string
	// Data is the event's JSON. Append copies nothing: the caller must not
	// modify it until Append returns.
	Data []byte
	// MessageID is the messageId the client gave the event, for
	// AppendFrom and SubmitFrom to skip it if already stored. Leave it
	// empty when spillway assigned the messageId: such an event is never
	// a duplicate. Like Data, it must not change until the call returns.
	MessageID []byte
}

// Record is one stored event as a consumer reads it.
type Record struct {
	// Seq is the event's sequence number; Ack takes the one past the last
	// delivered.
	Seq      uint64
	WriteKey string
	// Data is the event's JSON. It is never modified by the spool after
	// Read returns, so it may be kept.
	Data []byte
	// Stored is when the event's block was committed: the start of its
	// time in the spool, for lag and expiry.
	Stored time.Time
}

// Reasons a dead letter carries.
const (
	ReasonInvalid  = "invalid"  // broke the Segment spec at ingest
	ReasonRejected = "rejected" // the destination refused it (400, 413, 422)
	ReasonExpired  = "expired"  // not delivered within the destination's max_age
	ReasonCorrupt  = "corrupt"  // its block failed its checksum or decoding
	// ReasonTooLarge: over --max-event-bytes at ingest. Event holds only
	// the event's beginning, as a JSON string, and Size its real size, so
	// it cannot be replayed; only purge removes it.
	ReasonTooLarge = "too_large"
	// ReasonViolation: broke the tracking plan at ingest, in block mode.
	// Violations holds how. Only a replay that checks it against a plan
	// again takes it (see ReplayChecked).
	ReasonViolation = "violation"
)

// DeadLetter is an event that will not be delivered without an operator.
type DeadLetter struct {
	// ID is assigned by the spool when the dead letter is stored.
	ID          uint64    `json:"id"`
	Destination string    `json:"destination"` // empty for ingest-time rejects
	Reason      string    `json:"reason"`
	Status      int       `json:"status,omitempty"` // the destination's HTTP status, if any
	Attempts    int       `json:"attempts"`
	Error       string    `json:"error"`
	At          time.Time `json:"dead_lettered_at"`
	// WriteKey is kept so that a replay delivers under the original key.
	// It is never printed: listings mask it.
	WriteKey string          `json:"write_key,omitempty"`
	Event    json.RawMessage `json:"event"`
	// Size is the event's size in bytes when Event holds only its
	// beginning (reason too_large); 0 otherwise.
	Size int `json:"size,omitempty"`
	// Violations, for reason violation, is the JSON array of the ways the
	// event broke the tracking plan. The spool treats it as opaque.
	Violations json.RawMessage `json:"violations,omitempty"`
}

// Filter selects dead letters. Zero fields match everything.
type Filter struct {
	Destination string
	Reason      string
	// Limit caps how many are visited; 0 means no limit.
	Limit int
}

// Matches reports whether d is selected by f (Limit aside).
func (f Filter) Matches(d *DeadLetter) bool {
	return (f.Destination == "" || f.Destination == d.Destination) &&
		(f.Reason == "" || f.Reason == d.Reason)
}

// Backlog describes what a consumer has not yet acknowledged.
type Backlog struct {
	Events int64
	// Oldest is when the oldest unacknowledged event was stored; zero if
	// the backlog is empty.
	Oldest time.Time
}

// MaskWriteKey shows enough of a write key to tell keys apart in a
// listing, never the key itself.
func MaskWriteKey(k string) string {
	if k == "" {
		return ""
	}
	if len(k) <= 8 {
		return "…"
	}
	return k[:4] + "…"
}
