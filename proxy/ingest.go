package proxy

import (
	"bytes"
	"time"

	"github.com/klauspost/compress/gzip"

	"github.com/spillwayhq/spillway/internal/segment"
	"github.com/spillwayhq/spillway/spool"
)

// ingest is the per-request working set. It is pooled so that the hot path
// allocates almost nothing: the parser's buffers, the output events and the
// inflate buffer are all reused once Append has returned.
type ingest struct {
	out    []byte // every output event, back to back
	events []spool.Event
	dead   []spool.DeadLetter
	spans  []span // output bytes of events[i]
	// ids holds the client's messageIds back to back, idSpans events[i]'s
	// (empty where spillway assigned it): copied, since the body they
	// are read from is let go before the spool reads them.
	ids      []byte
	idSpans  []span
	deadSpan []span // output bytes of dead[i]
	// viol holds the violations of the dead letters a tracking plan
	// blocked, as JSON arrays back to back, violSpan dead[i]'s (empty for
	// other reasons): one buffer, kept with the ingest, rather than an
	// allocation for each blocked event.
	viol     []byte
	violSpan []span
	rejected []rejection
	skipped  int     // events the spool skipped as duplicates
	found    []found // tracking plan violations, counted once submitted
	scratch  []byte  // answer body, batch-level context

	fastKeys []int32 // for fastScan
	fastJunk []byte
	numText  []byte // for checkNumbers

	raw     []byte      // the body as read, until parsed
	stall   *time.Timer // hands the parse token on while raw is slow to arrive
	inflate []byte
	br      bytes.Reader
	zr      gzip.Reader
	auth    [192]byte

	rnd    [16 * 32]byte // random bytes for messageIds, drawn 32 at a time
	rndPos int
}

type span struct{ start, end int }

// rejection is an event of the request that was dead-lettered instead of
// stored: the index it had in the request, and why.
type rejection struct {
	index int
	// code labels spillway_events_rejected_total: a spec rule's code,
	// codeTooLarge or codeViolation.
	code string
	// text says why to a person: in the answer, the dead letter, the tail.
	text string
}

// Codes of rejections that are not a spec rule broken.
const (
	codeTooLarge = "too_large"
)

// rejectionCodes are the codes of rejections that are not a spec rule.
var rejectionCodes = []string{codeTooLarge, codeViolation}

func ruleRejection(i int, r segment.Rule) rejection {
	return rejection{index: i, code: r.Code(), text: r.String()}
}

func newIngest() *ingest {
	in := &ingest{}
	in.rndPos = len(in.rnd)
	return in
}

func (in *ingest) reset() {
	in.out = in.out[:0]
	clear(in.events) // drop write key strings
	in.events = in.events[:0]
	clear(in.dead)
	in.dead = in.dead[:0]
	in.spans = in.spans[:0]
	in.ids = in.ids[:0]
	in.idSpans = in.idSpans[:0]
	in.deadSpan = in.deadSpan[:0]
	in.viol = in.viol[:0]
	in.violSpan = in.violSpan[:0]
	in.rejected = in.rejected[:0]
	in.skipped = 0
	in.found = in.found[:0]
	in.scratch = in.scratch[:0]
}

// sliceEvents hands out the events' slices of in.out, once it has stopped
// growing. Capacity is capped so that nothing downstream can append into a
// neighbour.
func (in *ingest) sliceEvents() {
	for i, s := range in.spans {
		in.events[i].Data = in.out[s.start:s.end:s.end]
	}
	for i, s := range in.idSpans {
		if s.end > s.start {
			in.events[i].MessageID = in.ids[s.start:s.end:s.end]
		}
	}
	for i, s := range in.deadSpan {
		in.dead[i].Event = in.out[s.start:s.end:s.end]
	}
	for i, s := range in.violSpan {
		if s.end > s.start {
			in.dead[i].Violations = in.viol[s.start:s.end:s.end]
		}
	}
}

// addDead adds a dead letter whose event is in.out[event.start:event.end]
// and whose violations (if any) are in.viol[viol.start:viol.end], both
// handed out by sliceEvents.
func (in *ingest) addDead(d spool.DeadLetter, event, viol span) {
	in.dead = append(in.dead, d)
	in.deadSpan = append(in.deadSpan, event)
	in.violSpan = append(in.violSpan, viol)
}
