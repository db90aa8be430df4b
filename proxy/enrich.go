package proxy

import (
	"time"

	"github.com/valyala/fastjson"

	"github.com/spillwayhq/spillway/internal/segment"
)

// appendEnrichment appends what spillway adds to an event whose own fields
// are in out (first: none), and closes it.
func (in *ingest) appendEnrichment(out []byte, first bool, ep endpoint, f *fields, bt *batchTop) []byte {
	if !f.typ.set && ep.single() {
		out = appendKey(out, &first, []byte(segment.FieldType))
		out = append(out, '"')
		out = append(out, endpointNames[ep]...)
		out = append(out, '"')
	}
	if !f.messageID.set {
		out = appendKey(out, &first, []byte(segment.FieldMessageID))
		out = in.appendUUID(out)
	}
	out = appendTimestamps(out, &first, f, bt)
	out = appendKey(out, &first, []byte(segment.FieldReceivedAt))
	out = append(out, '"')
	out = append(out, bt.nowText...)
	return append(out, '"', '}')
}

// appendTimestamps corrects the device's clock as Segment does: the time the
// device took between timestamp and sentAt is trusted, its wall clock is
// not, so timestamp = receivedAt - (sentAt - timestamp). The device's value
// is kept as originalTimestamp unless the event already has one (it was
// forwarded by another spillway, which kept the device's).
func appendTimestamps(out []byte, first *bool, f *fields, bt *batchTop) []byte {
	ts := bt.now
	if f.timestamp.set && f.timestamp.t != fastjson.TypeNull {
		if !f.origTS.set {
			out = appendKey(out, first, []byte(segment.FieldOriginalTimestamp))
			if f.timestampValue == nil {
				out = append(out, f.timestampJSON...)
			} else {
				out = appendValue(out, f.timestampValue)
			}
		}
		if t, ok := parseTime(f.timestamp); ok {
			ts = t
			sentAt, hasSentAt := bt.sentAt, bt.hasSentAt
			if f.sentAt.set {
				sentAt, hasSentAt = parseTime(f.sentAt)
			}
			if hasSentAt {
				ts = bt.now.Add(t.Sub(sentAt))
			}
		}
	}
	out = appendKey(out, first, []byte(segment.FieldTimestamp))
	out = append(out, '"')
	out = segment.AppendTime(out, ts)
	return append(out, '"')
}

// parseTime reads a time field: a string, as segment.ParseTime takes it.
func parseTime(sc scalar) (time.Time, bool) {
	if sc.t != fastjson.TypeString {
		return time.Time{}, false
	}
	return segment.ParseTime(unsafeString(sc.s))
}

func appendKey(out []byte, first *bool, k []byte) []byte {
	if !*first {
		out = append(out, ',')
	}
	*first = false
	out = appendString(out, k)
	return append(out, ':')
}
