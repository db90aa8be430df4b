package spool

import (
	"bytes"
	"testing"
	"time"
)

// FuzzDecodeBlock feeds arbitrary bytes to the block decoder, which reads
// what is on disk: it must return records or an error, never panic or
// allocate without bound, and a block it encoded must decode to the same
// events.
func FuzzDecodeBlock(f *testing.F) {
	f.Add(sealBlock(encodeBody(nil, time.UnixMilli(1), []Event{{WriteKey: "wk", Data: []byte(`{"a":1}`)}})))
	f.Add(sealBlock(encodeBody(nil, time.UnixMilli(2), []Event{{Dest: "d", Data: []byte(`{}`)}, {Data: []byte(`[]`)}})))
	f.Add([]byte{blockVersion, 0, 0, 0, 0, 0})
	f.Add([]byte{blockVersion, flagZstd, 1, 2, 3, 4, 5})
	f.Fuzz(func(t *testing.T, val []byte) {
		body, err := openBlock(val)
		if err != nil {
			return
		}
		b, err := decodeBody(7, body)
		if err != nil {
			return
		}
		if len(b.recs) != len(b.dests) {
			t.Fatalf("%d records, %d destinations", len(b.recs), len(b.dests))
		}
		// Whatever decodes must survive a round trip.
		events := make([]Event, len(b.recs))
		for i, r := range b.recs {
			if r.Seq != 7+uint64(i) {
				t.Fatalf("record %d has seq %d", i, r.Seq)
			}
			events[i] = Event{WriteKey: r.WriteKey, Dest: b.dests[i], Data: r.Data}
		}
		again, err := openBlock(sealBlock(encodeBody(nil, b.stored, events)))
		if err != nil {
			t.Fatal(err)
		}
		b2, err := decodeBody(7, again)
		if err != nil {
			t.Fatal(err)
		}
		for i := range b.recs {
			if !bytes.Equal(b.recs[i].Data, b2.recs[i].Data) || b.recs[i].WriteKey != b2.recs[i].WriteKey || b.dests[i] != b2.dests[i] {
				t.Fatalf("record %d changed in a round trip", i)
			}
		}
	})
}
