package forwarders

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseDestination(t *testing.T) {
	dir := t.TempDir()
	base := func(name, kind, url string) Destination {
		return Destination{
			Name: name, Kind: kind, URL: url,
			BatchEvents: DefaultBatchEvents, BatchBytes: DefaultBatchBytes, Flush: DefaultFlush,
			Concurrency: DefaultConcurrency, Timeout: DefaultTimeout, BackoffMin: DefaultBackoffMin,
			BackoffMax: DefaultBackoffMax, MaxAge: DefaultMaxAge,
		}
	}
	tests := []struct {
		scenario string
		spec     string
		want     func() Destination
	}{
		{"a segment URL posts to the host with the defaults", "seg=segment+https://api.segment.io",
			func() Destination { return base("seg", KindSegment, "https://api.segment.io") }},
		{"a segment URL over http keeps its path prefix", "rudder=segment+http://127.0.0.1:8080/prefix/",
			func() Destination { return base("rudder", KindSegment, "http://127.0.0.1:8080/prefix") }},
		{"write_key overrides the events' keys", "seg=segment+https://api.segment.io?write_key=abc",
			func() Destination {
				d := base("seg", KindSegment, "https://api.segment.io")
				d.WriteKey = "abc"
				return d
			}},
		{"a webhook keeps the endpoint's own parameters and loses ours",
			"hook=https://example.com/in?token=s%3Dcret&batch_events=10&x=1&format=ndjson",
			func() Destination {
				d := base("hook", KindWebhook, "https://example.com/in?token=s%3Dcret&x=1")
				d.BatchEvents, d.Format = 10, FormatNDJSON
				return d
			}},
		{"a webhook defaults to a JSON array", "hook=http://127.0.0.1:9000/",
			func() Destination {
				d := base("hook", KindWebhook, "http://127.0.0.1:9000/")
				d.Format = FormatJSON
				return d
			}},
		{"every option can be overridden",
			"all_1=stdout://?batch_events=7&batch_bytes=64KiB&flush=0&concurrency=2&timeout=3s&backoff_min=10ms" +
				"&backoff_max=2s&max_age=1h&include_types=track,page&exclude_types=identify" +
				"&include_events=Signed+Up,Order%20Completed&exclude_events=Test",
			func() Destination {
				d := base("all_1", KindStdout, "")
				d.BatchEvents, d.BatchBytes, d.Flush, d.Concurrency, d.Timeout = 7, 64<<10, 0, 2, 3*time.Second
				d.BackoffMin, d.BackoffMax, d.MaxAge = 10*time.Millisecond, 2*time.Second, time.Hour
				d.IncludeTypes, d.ExcludeTypes = []string{"track", "page"}, []string{"identify"}
				d.IncludeEvents, d.ExcludeEvents = []string{"Signed Up", "Order Completed"}, []string{"Test"}
				return d
			}},
		{"a file URL names an absolute path", "f=file://" + filepath.Join(dir, "events.ndjson"),
			func() Destination { return base("f", KindFile, filepath.Join(dir, "events.ndjson")) }},
		{"event types are taken in any case and kept as Segment writes them",
			"s=stdout://?include_types=Track,PAGE,identify&exclude_types=Alias",
			func() Destination {
				d := base("s", KindStdout, "")
				d.IncludeTypes, d.ExcludeTypes = []string{"track", "page", "identify"}, []string{"alias"}
				return d
			}},
		{"a file URL may name a relative path", "f=file://events.ndjson",
			func() Destination { return base("f", KindFile, "events.ndjson") }},
	}
	for _, tt := range tests {
		t.Run(tt.scenario, func(t *testing.T) {
			got, err := ParseDestination(tt.spec, Defaults{})
			if err != nil {
				t.Fatal(err)
			}
			if want := tt.want(); !reflect.DeepEqual(got, want) {
				t.Errorf("got  %#v\nwant %#v", got, want)
			}
		})
	}
}

func TestParseDestinationTakesDefaultsFromFlags(t *testing.T) {
	d := Defaults{BatchEvents: 100, Flush: 50 * time.Millisecond, MaxAge: time.Hour}
	got, err := ParseDestination("s=stdout://?flush=2s", d)
	if err != nil {
		t.Fatal(err)
	}
	if got.BatchEvents != 100 || got.Flush != 2*time.Second || got.MaxAge != time.Hour || got.Concurrency != DefaultConcurrency {
		t.Errorf("got %+v", got)
	}
}

func TestParseDestinationErrorsNameTheDestinationAndParameter(t *testing.T) {
	tests := []struct {
		scenario string
		spec     string
		want     string
	}{
		{"a spec without a name", "https://example.com", `want NAME=URL`},
		{"a name with capitals", "Hook=https://example.com", `name must match`},
		{"an unknown scheme", "k=ftp://x", `destination k: unsupported scheme "ftp"`},
		{"an unknown parameter", "s=stdout://?batch_event=3", `destination s: unknown parameter "batch_event"`},
		{"an unknown parameter on segment", "s=segment+https://h?bogus=1", `destination s: unknown parameter "bogus"`},
		{"a bad integer", "s=stdout://?batch_events=lots", `destination s: batch_events: want an integer`},
		{"a zero batch size", "s=stdout://?batch_events=0", `destination s: batch_events: want an integer in 1..`},
		{"a bad size", "s=stdout://?batch_bytes=big", `destination s: batch_bytes: want a size`},
		{"a bad duration", "s=stdout://?timeout=10", `destination s: timeout: want a duration`},
		{"a zero timeout", "s=stdout://?timeout=0s", `destination s: timeout: must be > 0`},
		{"a negative flush", "s=stdout://?flush=-1s", `destination s: flush: must be >= 0`},
		{"too much concurrency", "s=stdout://?concurrency=100000", `destination s: concurrency: want an integer in 1..256`},
		{"backoff_max below backoff_min", "s=stdout://?backoff_min=2s&backoff_max=1s", `destination s: backoff_max 1s is below`},
		{"an empty list item", "s=stdout://?include_types=track,,page", `destination s: include_types: empty item`},
		{"a misspelt type to include", "f=stdout://?include_types=trak",
			`destination f: include_types: unknown event type "trak" (want track, identify, page, screen, group, alias)`},
		{"an unknown type among those to exclude", "s=stdout://?exclude_types=track,Purchase",
			`destination s: exclude_types: unknown event type "Purchase"`},
		{"a parameter given twice", "s=stdout://?flush=1s&flush=2s", `destination s: flush: given twice`},
		{"a write key on a webhook", "h=https://x?write_key=k", `destination h: write_key: only a segment destination`},
		{"an empty write key", "s=segment+https://x?write_key=", `destination s: write_key: must not be empty`},
		{"an unknown format", "h=https://x?format=xml", `destination h: format: want json, ndjson or segment`},
		{"a webhook without host", "h=https:///path", `destination h: URL has no host`},
		{"stdout with a path", "s=stdout://somewhere", `destination s: stdout takes no host or path`},
		{"a file without path", "f=file://", `destination f: file URL has no path`},
		{"credentials in a segment URL", "s=segment+https://key@api.segment.io", `?write_key=`},
	}
	for _, tt := range tests {
		t.Run(tt.scenario, func(t *testing.T) {
			_, err := ParseDestination(tt.spec, Defaults{})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

// A file destination that could not be opened is a bad URL, found when
// parsing (spillway exits 2) rather than at start-up (exit 1), and the file
// is not created by parsing.
func TestParseDestinationChecksAFileDestinationsDirectory(t *testing.T) {
	dir := t.TempDir()
	notDir := filepath.Join(dir, "plain")
	if err := os.WriteFile(notDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		scenario string
		path     string
		want     string
	}{
		{"a directory that does not exist", filepath.Join(dir, "nonexistent", "x.ndjson"),
			"destination f: file " + filepath.Join(dir, "nonexistent", "x.ndjson") + ": directory " +
				filepath.Join(dir, "nonexistent") + " does not exist"},
		{"a directory that is a file", filepath.Join(notDir, "x.ndjson"), notDir + " is not a directory"},
		{"a path that is a directory", dir, "destination f: file " + dir + " is a directory"},
	}
	for _, tt := range tests {
		t.Run(tt.scenario, func(t *testing.T) {
			_, err := ParseDestination("f=file://"+tt.path, Defaults{})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tt.want)
			}
		})
	}
	path := filepath.Join(dir, "events.ndjson")
	if _, err := ParseDestination("f=file://"+path, Defaults{}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("parsing created %s (stat: %v)", path, err)
	}
}

func TestParseDestinationsRefusesADuplicateName(t *testing.T) {
	_, err := ParseDestinations([]string{"a=stdout://", "b=stdout://", "a=https://x"}, Defaults{})
	if err == nil || !strings.Contains(err.Error(), "destination a: name used twice") {
		t.Fatalf("err = %v", err)
	}
}

func TestDestinationStringHidesSecrets(t *testing.T) {
	d, err := ParseDestination("h=https://user:hunter2@example.com/in", Defaults{})
	if err != nil {
		t.Fatal(err)
	}
	s, err2 := ParseDestination("s=segment+https://api.segment.io?write_key=sekrit", Defaults{})
	if err2 != nil {
		t.Fatal(err2)
	}
	for _, out := range []string{d.String(), s.String(), s.LogValue().String()} {
		if strings.Contains(out, "hunter2") || strings.Contains(out, "sekrit") {
			t.Errorf("%q shows a secret", out)
		}
	}
}
