package main

import (
	"bufio"
	"context"
	cryptorand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spillwayhq/spillway/internal/powercut"
	"github.com/spillwayhq/spillway/internal/testkit"
)

// The power-cut tests run spillway on internal/powercut, a filesystem that
// keeps only what was fsynced (file data, and directory entries once their
// directory is fsynced), and cut the power under live load: spillway is
// killed, the kernel's dirty pages are thrown away, and what was not
// durable is lost. After each cut spillway must start on what is left and
// deliver every event it acknowledged.

// powerRig is a power-cut filesystem, the destinations, and every event
// acknowledged across the cuts.
type powerRig struct {
	t        *testing.T
	rng      *rand.Rand
	dir, mnt string
	fs       *powercut.FS
	hook     *sink
	picky    *pickySink
	args     []string

	mu         sync.Mutex
	acked      map[string]time.Time // messageId -> when its 200 arrived
	ackedTotal uint64               // every event acknowledged, in every cycle
	cuts       int
	stats      powercut.Stats
	nextSeq    uint64 // as the last start logged it
	// pad, when set, adds that many random bytes to every event, so that
	// generations fill (trackEvents compress to almost nothing).
	pad int
}

func randomHex(n int) string {
	b := make([]byte, n/2)
	cryptorand.Read(b)
	return hex.EncodeToString(b)
}

// needPowerCut skips where FUSE cannot be mounted, except under CI=true,
// where the tests must run.
func needPowerCut(t *testing.T) {
	t.Helper()
	if err := powercut.Available(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("power-cut tests need FUSE, and CI=true: %v", err)
		}
		t.Skipf("power-cut tests need FUSE: %v", err)
	}
}

func newPowerRig(t *testing.T, seed uint64, extra ...string) *powerRig {
	t.Helper()
	needPowerCut(t)
	base := t.TempDir()
	r := &powerRig{
		t: t, rng: rand.New(rand.NewPCG(seed, 1)),
		dir: filepath.Join(base, "disk"), mnt: filepath.Join(base, "mnt"),
		hook: newSink(t), picky: newPickySink(t), acked: map[string]time.Time{},
	}
	for _, d := range []string{r.dir, r.mnt} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	r.args = append([]string{"--spool-dir", filepath.Join(r.mnt, "spool"), "--flush-interval", "20ms",
		"--destination", "hook=" + r.hook.URL, "--destination", "picky=" + r.picky.URL,
		"--batch-max-events", "100", "--backoff-min", "50ms", "--backoff-max", "200ms"}, extra...)
	r.mount()
	t.Cleanup(func() {
		if r.fs != nil {
			_ = r.fs.Unmount()
		}
	})
	return r
}

func (r *powerRig) mount() {
	r.t.Helper()
	fs, err := powercut.Mount(powercut.Options{Dir: r.dir, Mountpoint: r.mnt, Seed: r.rng.Uint64(), Logf: r.t.Logf})
	if err != nil {
		r.t.Fatalf("mount: %v", err)
	}
	r.fs = fs
}

// cut cuts the power under p (killing it), and mounts what survived.
func (r *powerRig) cut(p *process, mode powercut.Mode) powercut.Stats {
	r.t.Helper()
	st, err := r.fs.Cut(mode, func() error { p.kill(); return nil })
	r.fs = nil
	if err != nil {
		r.t.Fatalf("cut: %v", err)
	}
	r.cuts++
	r.stats.BytesDropped += st.BytesDropped
	r.stats.DirOpsDropped += st.DirOpsDropped
	r.stats.TornWrites += st.TornWrites
	r.mount()
	return st
}

// start runs spillway on the rig and waits until it is ready: a start-up
// that refuses the spool fails the test, and so does numbering that went
// back, which would number new events below cursors already past them.
func (r *powerRig) start() *process {
	r.t.Helper()
	p := startSpillway(r.t, "", nil, r.args...)
	// The line was written before /readyz answered, but it reaches the
	// buffer through exec's copying goroutine, which may not have run yet.
	var m []string
	testkit.Eventually(r.t, func() bool {
		m = nextSeqLog.FindStringSubmatch(p.stderr.String())
		return m != nil
	}, "next_seq in the spool's start-up log: %s", p.stderr)
	next, _ := strconv.ParseUint(m[1], 10, 64)
	// Every acknowledged event took a number of its own, from 0.
	r.mu.Lock()
	numbered := r.ackedTotal
	r.mu.Unlock()
	if next < r.nextSeq || next < numbered {
		r.t.Fatalf("numbering went back after a cut: next_seq %d, after %d at the last start and %d events acknowledged", next, r.nextSeq, numbered)
	}
	r.nextSeq = next
	return p
}

var nextSeqLog = regexp.MustCompile(`msg="spool open".* next_seq=(\d+)`)

// startNoWait runs spillway without waiting for it, to cut the power
// during its recovery.
func (r *powerRig) startNoWait() *process {
	p := &process{t: r.t, addr: freeAddr(r.t), stderr: &testkit.Buffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(binary, append([]string{"run", "--listen", p.addr}, r.args...)...)
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	r.t.Cleanup(p.kill)
	return p
}

// load posts batches from a few clients until ctx ends, recording every
// acknowledged event; one event in 50 is poison to the picky destination.
func (r *powerRig) load(ctx context.Context, p *process, tag string) *sync.WaitGroup {
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			client := &http.Client{Timeout: 5 * time.Second}
			defer client.CloseIdleConnections()
			for i := 0; ctx.Err() == nil; i++ {
				evs := trackEvents(fmt.Sprintf("%s-w%d-%d", tag, w, i), 20)
				for _, e := range evs {
					if r.pad > 0 {
						e["properties"].(map[string]any)["pad"] = randomHex(r.pad)
					}
				}
				if i%5 == 0 {
					evs[0]["properties"].(map[string]any)["poison"] = true
				}
				code, err := postBatch(ctx, client, p.url(), "wk", evs)
				if deadAddress(err) {
					return
				}
				if err != nil || code != 200 {
					continue
				}
				now := time.Now()
				r.mu.Lock()
				for _, e := range evs {
					r.acked[e["messageId"].(string)] = now
				}
				r.ackedTotal += uint64(len(evs))
				r.mu.Unlock()
			}
		})
	}
	return &wg
}

// operate runs one operator action against p's admin API, as cuts should
// also land while dead letters are being replayed or purged.
func (r *powerRig) operate(p *process, action string) {
	req, _ := http.NewRequest(http.MethodPost, p.url()+"/admin/dlq/"+action+"?destination=picky", nil)
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err == nil {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
}

// finish starts spillway once more and waits until both destinations hold
// every acknowledged event (picky: all but the poison ones).
func (r *powerRig) finish() *process {
	r.t.Helper()
	p := r.start()
	waitForAll(r.t, "at the hook destination", &r.mu, ackedSet(r), r.hook.Has)
	waitForAll(r.t, "at the picky destination", &r.mu, ackedSet(r), func(id string) bool {
		return r.picky.Has(id) || r.picky.isPoison(id)
	})
	return p
}

func ackedSet(r *powerRig) map[string]bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]bool, len(r.acked))
	for id := range r.acked {
		out[id] = true
	}
	return out
}

// TestPowerCutsUnderLoadLoseNoAcknowledgedEvent cuts the power at seeded
// random moments while clients post, destinations deliver, generations
// are created and removed, cursors saved, dead letters replayed and
// purged, and during start-up recovery itself. Every start must succeed,
// and at the end every acknowledged event must have been delivered.
func TestPowerCutsUnderLoadLoseNoAcknowledgedEvent(t *testing.T) {
	t.Parallel()
	cuts := 32
	if testing.Short() {
		cuts = 6
	}
	seed := crashSeed(t)
	r := newPowerRig(t, seed)
	for cycle := range cuts {
		mode := powercut.Clean
		if r.rng.IntN(3) == 0 {
			mode = powercut.Harsh
		}
		if r.rng.IntN(6) == 0 {
			// Cut during recovery from the previous cut.
			p := r.startNoWait()
			time.Sleep(time.Duration(r.rng.IntN(300)) * time.Millisecond)
			r.cut(p, mode)
			t.Logf("cycle %d: %v cut during start-up", cycle, modeName(mode))
			continue
		}
		p := r.start()
		ctx, cancel := context.WithCancel(t.Context())
		wg := r.load(ctx, p, fmt.Sprintf("c%d", cycle))
		action := ""
		switch r.rng.IntN(4) {
		case 0:
			action = "replay"
		case 1:
			action = "purge"
		}
		time.Sleep(time.Duration(200+r.rng.IntN(800)) * time.Millisecond)
		if action != "" {
			go r.operate(p, action)
			time.Sleep(time.Duration(r.rng.IntN(50)) * time.Millisecond)
		}
		st := r.cut(p, mode)
		cancel()
		wg.Wait()
		t.Logf("cycle %d: %v cut %s, dropped %d unsynced bytes, %d directory operations, %d torn writes",
			cycle, modeName(mode), action, st.BytesDropped, st.DirOpsDropped, st.TornWrites)
	}
	p := r.finish()
	unique, received := r.hook.Counts()
	t.Logf("%d cuts: %d acknowledged, %d delivered (%d duplicates); dropped at the cuts %d unsynced bytes, %d directory operations, %d torn writes",
		r.cuts, len(r.acked), unique, received-unique, r.stats.BytesDropped, r.stats.DirOpsDropped, r.stats.TornWrites)
	if code := p.stop(); code != 0 {
		t.Fatalf("exit status %d: %s", code, p.stderr)
	}
}

// TestPowerCutsWithDropOldestStartAndDeliver cuts the power while a full
// spool drops its oldest generations (the destination down). Dropping
// loses events by design, so the check is that every start succeeds and
// that, the destination back, everything acknowledged after the last drop
// is delivered and the backlog empties.
func TestPowerCutsWithDropOldestStartAndDeliver(t *testing.T) {
	t.Parallel()
	cuts := 8
	if testing.Short() {
		cuts = 3
	}
	r := newPowerRig(t, crashSeed(t), "--when-full", "drop-oldest", "--spool-max-bytes", "8MiB")
	r.hook.setStatus(503)
	for cycle := range cuts {
		p := r.start()
		ctx, cancel := context.WithCancel(t.Context())
		wg := r.load(ctx, p, fmt.Sprintf("d%d", cycle))
		time.Sleep(time.Duration(500+r.rng.IntN(1500)) * time.Millisecond)
		r.cut(p, powercut.Mode(r.rng.IntN(2)))
		cancel()
		wg.Wait()
	}
	r.hook.setStatus(200)
	p := r.start()
	// Acknowledged from here on, with room in the spool: none may be lost.
	r.mu.Lock()
	clear(r.acked)
	r.mu.Unlock()
	ctx, cancel := context.WithCancel(t.Context())
	wg := r.load(ctx, p, "after")
	time.Sleep(time.Second)
	cancel()
	wg.Wait()
	waitForAll(t, "at the hook destination", &r.mu, ackedSet(r), r.hook.Has)
	testkit.Eventually(t, func() bool { return metricValue(t, p, `spillway_destination_backlog_events{destination="hook"}`) == 0 }, "an empty backlog")
	if code := p.stop(); code != 0 {
		t.Fatalf("exit status %d: %s", code, p.stderr)
	}
}

// TestPowerCutsWithIntervalSyncLoseAtMostAnInterval: --sync=interval
// answers before the fsync, so a power cut may lose what was acknowledged
// since the last background fsync, and nothing older. The test watches
// spillway's fsync count: an event acknowledged before a moment after
// which two background fsyncs completed was covered by the second (they
// run one after another), and must survive.
func TestPowerCutsWithIntervalSyncLoseAtMostAnInterval(t *testing.T) {
	t.Parallel()
	cuts := 8
	if testing.Short() {
		cuts = 3
	}
	r := newPowerRig(t, crashSeed(t), "--sync", "interval", "--sync-interval", "50ms")
	var mustKeep, lost, acked int
	for cycle := range cuts {
		p := r.start()
		syncs := watchFsyncs(t, p)
		ctx, cancel := context.WithCancel(t.Context())
		wg := r.load(ctx, p, fmt.Sprintf("i%d", cycle))
		time.Sleep(time.Duration(300+r.rng.IntN(700)) * time.Millisecond)
		covered := syncs.coveredBefore()
		cutStats := r.cut(p, powercut.Clean)
		cancel()
		wg.Wait()
		syncs.stop()
		before := p
		p = r.start()
		r.mu.Lock()
		ids := make(map[string]time.Time)
		for id, at := range r.acked {
			if strings.HasPrefix(id, fmt.Sprintf("i%d-", cycle)) {
				ids[id] = at
			}
		}
		r.mu.Unlock()
		testkit.Eventually(t, func() bool {
			return metricValue(t, p, `spillway_destination_backlog_events{destination="hook"}`) == 0
		}, "the hook destination to catch up")
		lostCovered := 0
		for id, at := range ids {
			acked++
			if at.Before(covered) {
				mustKeep++
			}
			if !r.hook.Has(id) {
				lost++
				if at.Before(covered) {
					lostCovered++
					if lostCovered <= 20 {
						t.Errorf("cycle %d: %s was acknowledged at %v, before two background fsyncs completed (%v), and was lost",
							cycle, id, at.Format("15:04:05.000"), covered.Format("15:04:05.000"))
					}
				}
			}
		}
		if lostCovered > 0 {
			// What the two processes said is what tells a lost name from
			// a lost block or a numbering gone back.
			t.Errorf("cycle %d: %d covered events lost; the cut: %+v\nbefore the cut:\n%s\nafter it:\n%s",
				cycle, lostCovered, cutStats, before.stderr, p.stderr)
		}
		p.kill()
	}
	t.Logf("--sync=interval, %d cuts: %d acknowledged, %d lost, %d that had to be kept", cuts, acked, lost, mustKeep)
	if mustKeep == 0 {
		t.Fatal("no acknowledged event was old enough to have to survive: the test proves nothing")
	}
}

// TestPowerCutAfterDeliveredGenerationsWereRemovedKeepsNumbering: with
// --sync=interval and no background fsync due, the cursors that passed
// delivered generations live in memory while the removal of those
// generations is durable. After a cut neither the blocks nor the cursors
// say where numbering stood, and it went back, below numbers already
// delivered; the sequence lease keeps it going forward.
func TestPowerCutAfterDeliveredGenerationsWereRemovedKeepsNumbering(t *testing.T) {
	t.Parallel()
	r := newPowerRig(t, crashSeed(t), "--sync", "interval", "--sync-interval", "1h")
	r.pad = 1000
	p := r.start()
	started := metricValue(t, p, "spillway_spool_generations_started_total")
	ctx, cancel := context.WithCancel(t.Context())
	wg := r.load(ctx, p, "g")
	testkit.Eventually(t, func() bool {
		return metricValue(t, p, "spillway_spool_generations_started_total") >= started+2
	}, "two generations filled")
	// The first generation, named now: counted after the delivery, the
	// generations could already be down to the ones never removed.
	first, _ := filepath.Glob(filepath.Join(r.mnt, "spool", "gen-*"))
	if len(first) == 0 {
		t.Fatal("no generation in the spool")
	}
	cancel()
	wg.Wait()
	waitForAll(t, "at the hook destination", &r.mu, ackedSet(r), r.hook.Has)
	testkit.Eventually(t, func() bool {
		_, err := os.Stat(first[0])
		return errors.Is(err, fs.ErrNotExist)
	}, "the delivered generation %s removed", filepath.Base(first[0]))
	r.cut(p, powercut.Clean)
	p = r.start() // fails if numbering went back
	p.kill()
}

// TestPowerCutCatchesAcknowledgingBeforeTheFsync checks the tool itself:
// with the background fsync an hour away, acknowledged events live only
// in memory, and a cut must lose some.
func TestPowerCutCatchesAcknowledgingBeforeTheFsync(t *testing.T) {
	t.Parallel()
	r := newPowerRig(t, crashSeed(t), "--sync", "interval", "--sync-interval", "1h")
	p := r.start()
	ctx, cancel := context.WithCancel(t.Context())
	wg := r.load(ctx, p, "x")
	time.Sleep(500 * time.Millisecond)
	r.hook.setStatus(503) // nothing delivered from memory before the cut
	time.Sleep(300 * time.Millisecond)
	r.cut(p, powercut.Clean)
	cancel()
	wg.Wait()
	r.hook.setStatus(200)
	p = r.start()
	testkit.Eventually(t, func() bool {
		return metricValue(t, p, `spillway_destination_backlog_events{destination="hook"}`) == 0
	}, "the hook destination to catch up")
	r.mu.Lock()
	defer r.mu.Unlock()
	lost := 0
	for id := range r.acked {
		if !r.hook.Has(id) {
			lost++
		}
	}
	t.Logf("acknowledged before the fsync: %d of %d events lost at the cut", lost, len(r.acked))
	if lost == 0 {
		t.Fatalf("a cut lost none of %d events acknowledged before any fsync: the filesystem keeps what it should lose", len(r.acked))
	}
}

func crashSeed(t *testing.T) uint64 {
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("SPILLWAY_CRASH_SEED"); v != "" {
		fmt.Sscan(v, &seed)
	}
	t.Logf("seed %d (rerun with SPILLWAY_CRASH_SEED=%d)", seed, seed)
	return seed
}

func modeName(m powercut.Mode) string {
	if m == powercut.Harsh {
		return "harsh"
	}
	return "clean"
}

// fsyncWatch polls spillway's count of fsyncs, remembering when it rose.
type fsyncWatch struct {
	cancel context.CancelFunc
	done   chan struct{}
	mu     sync.Mutex
	rises  []time.Time // when the count was seen higher than before
}

func watchFsyncs(t *testing.T, p *process) *fsyncWatch {
	ctx, cancel := context.WithCancel(t.Context())
	w := &fsyncWatch{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		last := -1.0
		for ctx.Err() == nil {
			before := time.Now()
			n, err := scrapeMetric(p, "spillway_fsync_duration_seconds_count")
			if err == nil && n > last {
				if last >= 0 {
					w.mu.Lock()
					// The rise happened after the previous scrape began,
					// at the latest before this one ended.
					w.rises = append(w.rises, before)
					w.mu.Unlock()
				}
				last = n
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	return w
}

// coveredBefore returns a moment such that everything acknowledged before
// it is durable: two fsyncs were seen to complete after it.
func (w *fsyncWatch) coveredBefore() time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.rises) < 3 {
		return time.Time{}
	}
	// rises[n-2] was seen before the scrape that started at rises[n-1]:
	// the fsync seen at rises[n-1] started after the one seen at
	// rises[n-2] ended, which was after the scrape before it began.
	return w.rises[len(w.rises)-3]
}

func (w *fsyncWatch) stop() { w.cancel(); <-w.done }

func scrapeMetric(p *process, name string) (float64, error) {
	resp, err := (&http.Client{Timeout: 2 * time.Second}).Get(p.url() + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			return strconv.ParseFloat(v, 64)
		}
	}
	return 0, fmt.Errorf("no %s in /metrics", name)
}

func metricValue(t *testing.T, p *process, name string) float64 {
	t.Helper()
	v, err := scrapeMetric(p, name)
	if err != nil {
		return -1
	}
	return v
}

// pickySink is a webhook destination that refuses, with 400, any request
// holding an event marked poison, so those end as dead letters.
type pickySink struct {
	*sink
	mu     sync.Mutex
	poison map[string]bool
}

func newPickySink(t *testing.T) *pickySink {
	p := &pickySink{poison: map[string]bool{}}
	p.sink = newRefusingSink(t, func(r *testkit.Request) bool {
		refused := false
		for i, raw := range r.Events {
			var e struct {
				Properties struct {
					Poison bool `json:"poison"`
				} `json:"properties"`
			}
			if json.Unmarshal(raw, &e) == nil && e.Properties.Poison {
				p.mu.Lock()
				p.poison[r.IDs[i]] = true
				p.mu.Unlock()
				refused = true
			}
		}
		return refused
	})
	return p
}

func (p *pickySink) isPoison(id string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.poison[id]
}
