package segment

import "time"

// TimeLayout is the wire format of the times spillway writes (receivedAt,
// timestamp, sentAt): RFC 3339 in UTC with milliseconds, which is what
// Segment writes and what every SDK's parser takes. Its Z is a letter, not
// a zone: format only UTC times with it.
const TimeLayout = "2006-01-02T15:04:05.000Z"

// AppendTime appends t, in UTC, in TimeLayout. Every event's timestamps
// are written with it: a third of the cost of AppendFormat, which reads
// its layout each time.
func AppendTime(dst []byte, t time.Time) []byte {
	t = t.UTC()
	year, month, day := t.Date()
	if year < 0 || year > 9999 {
		return t.AppendFormat(dst, TimeLayout)
	}
	hour, minute, sec := t.Clock()
	ms := t.Nanosecond() / 1e6
	n := len(dst)
	dst = append(dst, "0000-00-00T00:00:00.000Z"...)
	b := dst[n:]
	put := func(at, v, width int) {
		for i := at + width - 1; i >= at; i-- {
			b[i] = byte('0' + v%10)
			v /= 10
		}
	}
	put(0, year, 4)
	put(5, int(month), 2)
	put(8, day, 2)
	put(11, hour, 2)
	put(14, minute, 2)
	put(17, sec, 2)
	put(20, ms, 3)
	return dst
}

// ParseTime reads an ISO 8601 time as the SDKs write it: with a zone
// (analytics-node, -go, -ruby) or without one (analytics-python with naive
// datetimes, taken as UTC). It keeps nothing of s.
func ParseTime(s string) (time.Time, bool) {
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, true
	}
	if t, err := time.Parse("2006-01-02T15:04:05.999999999", s); err == nil {
		return t, true
	}
	return time.Time{}, false
}
