package forwarders

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fastjson"

	"github.com/spillwayhq/spillway/internal/testkit"
	"github.com/spillwayhq/spillway/spool"
)

const archiveOpts = "tls=false&path_style=true&backoff_min=5ms&backoff_max=50ms"

func startStore(t *testing.T) *testkit.S3 { return testkit.StartS3(t, "events") }

func archiveSpec(s *testkit.S3, params string) string {
	return "archive=s3://" + s.Bucket + "/raw/spillway?endpoint=" + s.Endpoint + "&" + archiveOpts + "&" + params
}

// hourEvents returns n events received an hour apart from start, so that
// they fall into n partitions.
func hourEvents(n int, start time.Time) []ev {
	out := make([]ev, n)
	for i := range out {
		at := start.Add(time.Duration(i) * time.Hour).Format(time.RFC3339Nano)
		out[i] = ev{id: fmt.Sprintf("m-%03d", i), key: "wk-1", extra: `,"receivedAt":"` + at + `"`}
	}
	return out
}

var objectKeyRE = regexp.MustCompile(`^raw/spillway/(?:undelivered/[^/]+/)?dt=(\d{4}-\d{2}-\d{2})/hour=(\d{2})/(\d{20})-(\d{20})\.ndjson\.gz$`)

// archivedIDs reads every object under prefix, checks its name against
// its contents (range, partition of the first event), and counts each
// messageId.
func archivedIDs(t *testing.T, s *testkit.S3, prefix string) map[string]int {
	t.Helper()
	seen := map[string]int{}
	for _, key := range s.Keys(t, prefix) {
		m := objectKeyRE.FindStringSubmatch(key)
		if m == nil {
			t.Fatalf("object %s: name not in the layout", key)
		}
		lines := s.Lines(t, key)
		received, err := time.Parse(time.RFC3339Nano, fastjson.GetString([]byte(lines[0]), "receivedAt"))
		if err != nil {
			t.Fatalf("object %s: first line %s: %v", key, lines[0], err)
		}
		if got, want := m[1]+"T"+m[2], received.UTC().Format("2006-01-02T15"); got != want {
			t.Errorf("object %s: partition %s, first event received in %s", key, got, want)
		}
		first, _ := strconv.ParseUint(m[3], 10, 64)
		last, _ := strconv.ParseUint(m[4], 10, 64)
		if last < first || uint64(len(lines)) > last-first+1 {
			t.Errorf("object %s: %d events in range %d..%d", key, len(lines), first, last)
		}
		for _, l := range lines {
			if got := fastjson.GetString([]byte(l), "writeKey"); got != "wk-1" {
				t.Errorf("object %s: line %s: writeKey %q", key, l, got)
			}
			seen[fastjson.GetString([]byte(l), "messageId")]++
		}
	}
	return seen
}

func checkOnce(t *testing.T, seen map[string]int, evs []ev) {
	t.Helper()
	for _, e := range evs {
		if seen[e.id] != 1 {
			t.Errorf("%s archived %d times, want once", e.id, seen[e.id])
		}
	}
	if len(seen) != len(evs) {
		t.Errorf("%d distinct events archived, want %d", len(seen), len(evs))
	}
}

func TestArchiveWritesEveryEventOnceInTheLayout(t *testing.T) {
	s := startStore(t)
	sp := openSpool(t, t.TempDir(), "archive")
	evs := hourEvents(30, time.Date(2026, 12, 1, 22, 30, 0, 0, time.UTC))
	for i := 0; i < len(evs); i += 3 { // several blocks
		appendEvents(t, sp, evs[i:i+3]...)
	}
	// About four events an object: objects close at batch_bytes, and the
	// drain cuts the last one short of it.
	g := startGroup(t, sp, nil, archiveSpec(s, "batch_bytes=600&flush=1h"))
	testkit.Eventually(t, func() bool { return sp.Backlog("archive").Events < 4 }, "backlog %d", backlog(sp, "archive"))
	if err := shutdown(t, g, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	keys := s.Keys(t, "raw/")
	if len(keys) < 5 {
		t.Errorf("%d objects, want one per 600 bytes of events: %v", len(keys), keys)
	}
	checkOnce(t, archivedIDs(t, s, "raw/"), evs)
	if !strings.Contains(strings.Join(keys, " "), "dt=2026-12-02/hour=") {
		t.Errorf("no object in the next day's partition: %v", keys)
	}
	if got := s.AccessKeys(); len(got) != 1 || got[0] != testkit.S3AccessKey {
		t.Errorf("requests signed with %v, want the key of AWS_ACCESS_KEY_ID", got)
	}
}

func TestArchiveFlushClosesAPartialObjectAndDrainCutsTheRest(t *testing.T) {
	s := startStore(t)
	sp := openSpool(t, t.TempDir(), "archive")
	g := startGroup(t, sp, nil, archiveSpec(s, "flush=20ms"))
	first := numbered(4)
	appendEvents(t, sp, first...)
	testkit.Eventually(t, func() bool { return len(s.Keys(t, "raw/")) == 1 }, "objects %v", func() any { return s.Keys(t, "raw/") })
	if err := shutdown(t, g, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	checkOnce(t, lineIDsOf(t, s), first)

	// The next run has an hour-long flush: only the drain cuts its object.
	s2 := s
	g = startGroup(t, sp, nil, archiveSpec(s2, "flush=1h"))
	more := []ev{{id: "late-1", key: "wk-1"}, {id: "late-2", key: "wk-1"}}
	appendEvents(t, sp, more...)
	if err := shutdown(t, g, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	checkOnce(t, lineIDsOf(t, s), append(first, more...))
}

func lineIDsOf(t *testing.T, s *testkit.S3) map[string]int { return lineIDsUnder(t, s, "raw/") }

func lineIDsUnder(t *testing.T, s *testkit.S3, prefix string) map[string]int {
	seen := map[string]int{}
	for _, k := range s.Keys(t, prefix) {
		for _, l := range s.Lines(t, k) {
			seen[fastjson.GetString([]byte(l), "messageId")]++
		}
	}
	return seen
}

// archiveAfterCrash archives evs from a spool in which the archive had
// recorded the range of the events first..last (indexes into evs) before
// a crash left its cursor at the start, and returns the store, the spool
// and the events' sequence numbers.
func archiveAfterCrash(t *testing.T, evs []ev, first, last int, confirmed bool) (*testkit.S3, *spool.Spool, []uint64) {
	t.Helper()
	s := startStore(t)
	sp := openSpool(t, t.TempDir(), "archive", "peek")
	appendEvents(t, sp, evs...)
	recs, err := sp.Read("peek", 1000, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	seq := make([]uint64, len(recs))
	for i, r := range recs {
		seq[i] = r.Seq
	}
	if err := sp.SetPending("archive", spool.Pending{First: seq[first], Last: seq[last], Confirmed: confirmed}); err != nil {
		t.Fatal(err)
	}
	g := startGroup(t, sp, nil, archiveSpec(s, "flush=10ms"))
	testkit.Eventually(t, func() bool { return sp.Backlog("archive").Events == 0 }, "backlog %d", backlog(sp, "archive"))
	if err := shutdown(t, g, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	return s, sp, seq
}

func TestArchiveCutsAnUnconfirmedRangeAgainWithTheSameBounds(t *testing.T) {
	// What a crash between recording a range and confirming its upload
	// leaves: the range recorded, the cursor before it. With a flush and
	// batch_bytes that would put all ten events into one object, the
	// first object is the recorded range, to the event, and the rest
	// follows in another.
	evs := numbered(10)
	s, sp, seq := archiveAfterCrash(t, evs, 0, 3, false)
	keys := s.Keys(t, "raw/")
	if len(keys) != 2 || !strings.HasSuffix(keys[0], fmt.Sprintf("%020d-%020d.ndjson.gz", seq[0], seq[3])) {
		t.Fatalf("objects %v, want %d..%d first and the rest in another", keys, seq[0], seq[3])
	}
	checkOnce(t, lineIDsOf(t, s), evs)
	p, ok, err := sp.PendingRange("archive")
	if err != nil || !ok || !p.Confirmed || p.Last != seq[9] {
		t.Errorf("range recorded %+v %v %v, want up to %d confirmed", p, ok, err, seq[9])
	}
}

func TestArchiveSkipsAConfirmedRangeWhateverTheCursorSays(t *testing.T) {
	// What a crash after a confirmation and before the cursor's lazy save
	// leaves: the cursor behind the confirmed range. Its events are not
	// written into a second object.
	evs := numbered(8)
	s, _, _ := archiveAfterCrash(t, evs, 0, 4, true)
	checkOnce(t, lineIDsOf(t, s), evs[5:])
}

func TestArchiveRetriesSlowDownAndReportsAccessDenied(t *testing.T) {
	s := startStore(t)
	sp := openSpool(t, t.TempDir(), "archive")
	reg := prometheus.NewRegistry()
	slowDowns := 3
	s.SetFault(func(r *http.Request) *testkit.S3Fault {
		if r.Method != http.MethodPut || slowDowns == 0 {
			return nil
		}
		slowDowns--
		return &testkit.S3Fault{Status: http.StatusServiceUnavailable, Code: "SlowDown"}
	})
	g := startGroup(t, sp, reg, archiveSpec(s, "flush=10ms"))
	evs := numbered(5)
	appendEvents(t, sp, evs...)
	testkit.Eventually(t, func() bool { return sp.Backlog("archive").Events == 0 }, "backlog %d", backlog(sp, "archive"))
	if got := s.Faults(http.StatusServiceUnavailable); got != 3 {
		t.Errorf("%d SlowDown answers, want 3", got)
	}
	if got := metric(t, reg, "spillway_forward_retries_total", "destination", "archive", "reason", "server_error"); got != 3 {
		t.Errorf("retries for server_error = %v, want 3", got)
	}
	checkOnce(t, lineIDsOf(t, s), evs)

	// Access denied: misconfigured, the events kept, nothing dead-lettered.
	s.SetFault(func(r *http.Request) *testkit.S3Fault {
		if r.Method != http.MethodPut {
			return nil
		}
		return &testkit.S3Fault{Status: http.StatusForbidden, Code: "AccessDenied"}
	})
	more := []ev{{id: "denied-1", key: "wk-1"}, {id: "denied-2", key: "wk-1"}}
	appendEvents(t, sp, more...)
	testkit.Eventually(t, func() bool { return g.Status()[0].State == StateMisconfigured }, "state %v", func() any { return g.Status()[0] })
	st := g.Status()[0]
	if st.BacklogEvents != 2 || st.DeadLettered != 0 || !strings.Contains(st.LastError, "AccessDenied") {
		t.Errorf("status %+v, want 2 events kept, none dead-lettered, AccessDenied reported", st)
	}
	if strings.Contains(st.LastError, testkit.S3SecretKey) {
		t.Errorf("last error holds the secret key: %s", st.LastError)
	}
	s.SetFault(nil)
	testkit.Eventually(t, func() bool { return sp.Backlog("archive").Events == 0 }, "backlog %d", backlog(sp, "archive"))
	checkOnce(t, lineIDsOf(t, s), append(evs, more...))
}

func TestArchiveURLs(t *testing.T) {
	good := map[string]struct {
		spec string
		want ArchiveOptions
	}{
		"a bucket and prefix on AWS, over TLS": {
			"a=s3://bkt/raw/events/", ArchiveOptions{Bucket: "bkt", Prefix: "raw/events", Endpoint: "s3.amazonaws.com", Region: "us-east-1"},
		},
		"a self-hosted store over plain HTTP": {
			"a=s3://bkt?endpoint=minio:9000&tls=false&path_style=true&region=eu-west-3&storage_class=STANDARD_IA",
			ArchiveOptions{Bucket: "bkt", Endpoint: "minio:9000", Region: "eu-west-3", PathStyle: true, PlainHTTP: true, StorageClass: "STANDARD_IA"},
		},
	}
	for name, tc := range good {
		t.Run(name, func(t *testing.T) {
			d := parse(t, tc.spec)
			if d.Kind != KindArchive || d.Archive != tc.want {
				t.Errorf("got %s %+v, want %+v", d.Kind, d.Archive, tc.want)
			}
			if d.BatchBytes != DefaultArchiveBatchBytes || d.Flush != DefaultArchiveFlush {
				t.Errorf("batch_bytes %d flush %v, want the archive's defaults", d.BatchBytes, d.Flush)
			}
		})
	}
	bad := map[string]struct{ specs []string }{
		"credentials in the URL":        {[]string{"a=s3://AKID:secret@bkt/raw"}},
		"no bucket":                     {[]string{"a=s3:///raw"}},
		"an unknown parameter":          {[]string{"a=s3://bkt?acl=public"}},
		"a fallback that is not there":  {[]string{"w=http://127.0.0.1:1/?fallback=a"}},
		"a fallback that is no archive": {[]string{"w=http://127.0.0.1:1/?fallback=x", "x=stdout://"}},
		"an archive with a fallback":    {[]string{"a=s3://bkt?fallback=b", "b=s3://bkt2"}},
	}
	for name, tc := range bad {
		t.Run(name, func(t *testing.T) {
			_, err := ParseDestinations(tc.specs, Defaults{})
			if err == nil {
				t.Fatal("accepted")
			}
			if strings.Contains(err.Error(), "secret") {
				t.Errorf("error repeats the secret: %v", err)
			}
		})
	}
}

func TestFallbackHandsTheUndeliveredToTheArchiveAtShutdown(t *testing.T) {
	s := startStore(t)
	down := testkit.NewSink(t, func(int, *testkit.Request) testkit.Answer {
		return testkit.Answer{Status: http.StatusServiceUnavailable}
	})
	sp := openSpool(t, t.TempDir(), "hook", "archive")
	g := startGroup(t, sp, nil, "hook="+down.URL+"?"+opts(testOpts, "fallback=archive"), archiveSpec(s, "flush=10ms"))
	evs := numbered(20)
	appendEvents(t, sp, evs...)
	testkit.Eventually(t, func() bool { return sp.Backlog("archive").Events == 0 }, "archive backlog %d", backlog(sp, "archive"))
	// The hand-off's fifth of the shutdown time must hold an upload under
	// the race detector on a loaded machine; a fifth of 1 s did not.
	if err := shutdown(t, g, 4*time.Second); err != nil {
		t.Fatalf("shutdown: %v (the hand-off emptied the destination)", err)
	}
	if n := sp.Backlog("hook").Events; n != 0 {
		t.Errorf("hook backlog %d after the hand-off, want 0", n)
	}
	checkOnce(t, lineIDsUnder(t, s, "raw/spillway/undelivered/hook/dt="), evs)
	// The archive's own copy is where it was.
	checkOnce(t, lineIDsUnder(t, s, "raw/spillway/dt="), evs)
}

func TestFallbackToAnArchiveThatIsDownLeavesTheEventsInTheSpool(t *testing.T) {
	s := startStore(t)
	s.SetFault(func(r *http.Request) *testkit.S3Fault {
		return &testkit.S3Fault{Status: http.StatusServiceUnavailable, Code: "SlowDown"}
	})
	down := testkit.NewSink(t, func(int, *testkit.Request) testkit.Answer {
		return testkit.Answer{Status: http.StatusServiceUnavailable}
	})
	sp := openSpool(t, t.TempDir(), "hook", "archive")
	g := startGroup(t, sp, nil, "hook="+down.URL+"?"+opts(testOpts, "fallback=archive"), archiveSpec(s, "flush=10ms"))
	appendEvents(t, sp, numbered(10)...)
	err := shutdown(t, g, 500*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "hand hook off to archive") {
		t.Errorf("shutdown: %v, want the failed hand-off", err)
	}
	if n := sp.Backlog("hook").Events; n != 10 {
		t.Errorf("hook backlog %d, want the 10 events kept", n)
	}
}

func TestArchiveOfAMissingBucketIsMisconfigured(t *testing.T) {
	s := startStore(t)
	sp := openSpool(t, t.TempDir(), "archive")
	spec := "archive=s3://no-such-bucket/raw?endpoint=" + s.Endpoint + "&" + archiveOpts + "&flush=10ms"
	g := startGroup(t, sp, nil, spec)
	appendEvents(t, sp, numbered(3)...)
	testkit.Eventually(t, func() bool { return g.Status()[0].State == StateMisconfigured }, "state %v", func() any { return g.Status()[0] })
	if st := g.Status()[0]; !strings.Contains(st.LastError, "NoSuchBucket") || st.BacklogEvents != 3 || st.DeadLettered != 0 {
		t.Errorf("status %+v, want NoSuchBucket, the 3 events kept", st)
	}
}

func TestFallbackHandOffRepeatedAfterACrashHandsEachEventOffOnce(t *testing.T) {
	// A first spool hands four events off. A second one, the same events
	// and six more, is what a crash during that hand-off leaves: the
	// range recorded (confirmed or not), the cursor before it. Its
	// hand-off must not write the four events into a second object.
	for name, confirmed := range map[string]bool{
		"the crash came after the store's confirmation was recorded":  true,
		"the crash came between the upload and recording its success": false,
	} {
		t.Run(name, func(t *testing.T) {
			s := startStore(t)
			evs := hourEvents(10, time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC))
			handOffAll := func(sp *spool.Spool) {
				t.Helper()
				down := testkit.NewSink(t, func(int, *testkit.Request) testkit.Answer {
					return testkit.Answer{Status: http.StatusServiceUnavailable}
				})
				g := startGroup(t, sp, nil, "hook="+down.URL+"?"+opts(testOpts, "fallback=archive"), archiveSpec(s, "flush=1h"))
				// The drain waits out its four fifths for the failing hook;
				// the hand-off's fifth must hold an upload on a loaded
				// machine (a fifth of 1 s did not, about one run in ten).
				if err := shutdown(t, g, 4*time.Second); err != nil {
					t.Fatalf("shutdown: %v", err)
				}
			}
			first := openSpool(t, t.TempDir(), "hook", "archive")
			appendEvents(t, first, evs[:4]...)
			handOffAll(first)
			if keys := s.Keys(t, "raw/spillway/undelivered/"); len(keys) != 1 {
				t.Fatalf("objects %v after the first hand-off, want one", keys)
			}

			sp := openSpool(t, t.TempDir(), "hook", "archive", "peek")
			appendEvents(t, sp, evs[:4]...)
			recs, err := sp.Read("peek", 10, 1<<20)
			if err != nil {
				t.Fatal(err)
			}
			if err := sp.SetPending("hook", spool.Pending{First: recs[0].Seq, Last: recs[3].Seq, Confirmed: confirmed}); err != nil {
				t.Fatal(err)
			}
			appendEvents(t, sp, evs[4:]...)
			handOffAll(sp)
			keys := s.Keys(t, "raw/spillway/undelivered/")
			if len(keys) != 2 {
				t.Errorf("objects %v, want the first hand-off's and one of the six events after it", keys)
			}
			checkOnce(t, archivedIDs(t, s, "raw/spillway/undelivered/hook/"), evs)
		})
	}
}

// failingScratch is a spool whose first scratch files cannot be written,
// as on a full disk.
type failingScratch struct {
	*spool.Spool
	dir    string
	failed atomic.Int32 // scratch files still to fail
}

func (f *failingScratch) ScratchFile() (*os.File, error) {
	if f.failed.Add(-1) < 0 {
		return f.Spool.ScratchFile()
	}
	path := filepath.Join(f.dir, "read-only")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		return nil, err
	}
	return os.Open(path) // open for reading: every write fails
}

func TestArchiveDropsAnObjectWhoseScratchFileFailsAndWritesItAgain(t *testing.T) {
	s := startStore(t)
	sp := &failingScratch{Spool: openSpool(t, t.TempDir(), "archive"), dir: t.TempDir()}
	sp.failed.Store(2)
	g := startGroup(t, sp, nil, archiveSpec(s, "flush=10ms"))
	evs := hourEvents(10, time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC))
	appendEvents(t, sp, evs...)
	testkit.Eventually(t, func() bool { return sp.Backlog("archive").Events == 0 }, "backlog %d", backlog(sp, "archive"))
	if err := shutdown(t, g, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if n := sp.failed.Load(); n >= 0 {
		t.Fatalf("%d failing scratch files left unused", n+1)
	}
	checkOnce(t, archivedIDs(t, s, "raw/"), evs)
}
