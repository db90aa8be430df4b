package proxy

import (
	"time"

	"github.com/valyala/fastjson"

	"github.com/spillwayhq/spillway/internal/segment"
)

// batchTop is what a request says for all of its events.
type batchTop struct {
	key          []byte // batch-level writeKey, else Basic auth's
	sentAt       time.Time
	hasSentAt    bool
	context      []byte // batch-level context, marshalled once
	contextObj   *fastjson.Object
	integrations []byte
	integObj     *fastjson.Object
	now          time.Time
	nowText      []byte
}

// fields are the top-level fields of an event that validation and
// enrichment look at; the last of a duplicated key wins, as in most
// decoders.
type fields struct {
	typ, userID, anonID, prevID, event, groupID scalar
	messageID, timestamp, origTS, sentAt        scalar
	// The device's timestamp, for originalTimestamp: the tree parser keeps
	// its value, the fast path its stored form.
	timestampValue              *fastjson.Value
	timestampJSON               []byte
	writeKey                    []byte
	hasContext, hasIntegrations bool
	// contextAt and contextEnd are where the fast path wrote the event's
	// context object in in.out (contextEnd 0: not known), so that flagged
	// violations go into it without reading the event again.
	contextAt, contextEnd int
}

// scalar is a top-level field as validation and enrichment read it:
// whether the event has it, its type and, for a string, its contents.
type scalar struct {
	set bool
	t   fastjson.Type
	s   []byte // a string's contents, unescaped
}

// take records a top-level field of an event, and reports whether it is
// stored as it came: false for the fields spillway drops or rewrites.
func (f *fields) take(k string, sc scalar) (stored bool) {
	switch k {
	case segment.FieldWriteKey:
		if sc.t == fastjson.TypeString && len(sc.s) > 0 {
			f.writeKey = sc.s
		}
		return false
	case segment.FieldSentAt:
		f.sentAt = sc
		return false
	case segment.FieldReceivedAt:
		return false // always ours
	case segment.FieldTimestamp:
		f.timestamp = sc
		return false // rewritten by enrichment
	case segment.FieldMessageID:
		if sc.isBlank() {
			f.messageID = scalar{}
			return false
		}
		f.messageID = sc
	case segment.FieldType:
		if sc.t == fastjson.TypeNull {
			f.typ = scalar{}
			return false
		}
		f.typ = sc
	case segment.FieldOriginalTimestamp:
		f.origTS = sc
	case segment.FieldUserID:
		f.userID = sc
	case segment.FieldAnonymousID:
		f.anonID = sc
	case segment.FieldPreviousID:
		f.prevID = sc
	case segment.FieldEvent:
		f.event = sc
	case segment.FieldGroupID:
		f.groupID = sc
	case segment.FieldContext:
		f.hasContext = true
	case segment.FieldIntegrations:
		f.hasIntegrations = true
	}
	return true
}

func scalarOf(v *fastjson.Value) scalar {
	sc := scalar{set: true, t: v.Type()}
	if sc.t == fastjson.TypeString {
		sc.s, _ = v.StringBytes()
	}
	return sc
}

// isID reports whether the field can identify something: a non-empty
// string or a number (several SDKs send numeric ids; Segment takes them).
func (sc scalar) isID() bool {
	return sc.t == fastjson.TypeString && len(sc.s) > 0 || sc.t == fastjson.TypeNumber
}

func (sc scalar) isBlank() bool {
	return sc.t == fastjson.TypeNull || sc.t == fastjson.TypeString && len(sc.s) == 0
}
