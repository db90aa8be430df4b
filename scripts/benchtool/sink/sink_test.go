package main

import (
	"strings"
	"testing"
)

func TestCountEvents(t *testing.T) {
	tests := []struct {
		scenario string
		body     string
		ndjson   bool
		want     int
		ok       bool
	}{
		{"an empty array holds no events", ` [ ] `, false, 0, true},
		{"an array of objects counts its elements", `[{"a":1},{"b":[1,2,{"c":"]"}]}]`, false, 2, true},
		{"commas and brackets inside strings do not count", `[{"a":"x,y]}"},{"b":"q\"],{"}]`, false, 2, true},
		{"an escaped backslash ends before the quote", `[{"a":"x\\"},{"b":2}]`, false, 2, true},
		{"scalars are elements too", `[1,"two",null,{"x":3}]`, false, 4, true},
		{"NDJSON counts non-empty lines", "{\"a\":1}\n\n{\"b\":2}\n", true, 2, true},
		{"NDJSON without its content type is recognised", "{\"a\":1}\n{\"b\":2}", false, 2, true},
		{"a Segment body counts its batch", `{"batch":[{"a":1},{"a":2},{"a":3}],"sentAt":"x"}`, false, 3, true},
		{"a bare event is one", `{"type":"track","event":"x"}`, false, 1, true},
		{"an unterminated string is rejected", `[{"a":"x}]`, false, 0, false},
		{"an unclosed array is rejected", `[{"a":1}`, false, 0, false},
		{"trailing garbage is rejected", `[{"a":1}]x`, false, 0, false},
		{"an empty body is rejected", ``, false, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.scenario, func(t *testing.T) {
			got, ok := countEvents([]byte(tt.body), tt.ndjson)
			if got != tt.want || ok != tt.ok {
				t.Errorf("countEvents(%q) = %d, %v; want %d, %v", tt.body, got, ok, tt.want, tt.ok)
			}
		})
	}
}

func BenchmarkCountArray(b *testing.B) {
	ev := `{"type":"track","event":"Product Added","messageId":"ajs-next-408f5a8e20f3769c5e3b-000000000123","anonymousId":"7a2854c8-a52c-4b89-a568-0e6706c3be2a","userId":"usr_3280713","timestamp":"2025-06-03T08:11:20.366Z","properties":{"product_id":"prod_f501938b5edc636b","name":"Classic Sand Backpack","price":212.65,"quantity":3,"currency":"USD","cart_id":"2097dee287d13b21"},"context":{"library":{"name":"analytics.js","version":"next-1.73.0"},"page":{"path":"/p/classic-sand-backpack-116","referrer":"https://t.co/","url":"https://shop.example.com/p/classic-sand-backpack-116"},"userAgent":"Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0","ip":"170.248.221.97","locale":"en-US"},"receivedAt":"2025-06-03T08:11:20.400Z"}`
	body := []byte("[" + strings.Repeat(ev+",", 499) + ev + "]")
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if n, ok := countArray(body); n != 500 || !ok {
			b.Fatal(n, ok)
		}
	}
}
