package spool

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
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

// Blocks written before the dictionary, and any written with it, stay
// readable: the dictionary is named by ID and must never change.
func TestBlocksWithAndWithoutTheDictionaryDecode(t *testing.T) {
	if got := fmt.Sprintf("%x", sha256.Sum256(eventDict)); got != "25b5d72a8a85cc48d5073b59b44f9eebadb778c3a9d0c54b24befc471cfb1250" {
		t.Fatalf("dict.txt changed (sha256 %s): blocks written with dictionary %d would become unreadable; add a new dictionary with a new ID instead", got, dictID)
	}
	body := encodeBody(nil, time.UnixMilli(5), []Event{{WriteKey: "wk", Data: []byte(`{"type":"track","event":"Product Added","context":{"library":{"name":"analytics.js"}}}`)}})
	plain, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest))
	if err != nil {
		t.Fatal(err)
	}
	old := plain.EncodeAll(body, make([]byte, envelopeLen))
	old[0], old[1] = blockVersion, flagZstd
	binary.BigEndian.PutUint32(old[2:6], crc32.Checksum(old[envelopeLen:], castagnoli))
	for name, val := range map[string][]byte{"without": old, "with": sealBlock(body)} {
		got, err := openBlock(val)
		if err != nil || !bytes.Equal(got, body) {
			t.Errorf("block %s the dictionary: %v, body equal %v", name, err, bytes.Equal(got, body))
		}
	}
	if len(sealBlock(body)) >= len(old) {
		t.Errorf("with the dictionary %d bytes, without %d: it does not help", len(sealBlock(body)), len(old))
	}
}
