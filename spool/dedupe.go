package spool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
	badger "github.com/dgraph-io/badger/v4"
	"github.com/prometheus/client_golang/prometheus"
)

// The messageId index: an event whose (write key, messageId) was stored
// within Config.DedupeWindow is not stored again.
//
// Where the entries live, and why. An entry must be durable in the same
// commit as its event: after kill -9 or a power cut, no acknowledged event
// may lack its entry and no entry may exist for an event that was not
// stored. A separate database committed after the events would give that
// too, but at the price of a second fsync on every group commit. So each
// group's entries are written as one key ('x' | first seq) in the same
// generation transaction as its blocks: that key is the index's
// write-ahead log, atomic with the events for free. Generations are
// dropped once delivered, within seconds at full load, so the entries are
// also kept in the index's own files (runs, in dedupe/): before the
// writer leaves a generation (see rotateGeneration) it hands what it has
// committed to flushLoop, which writes it into a run while holding a
// reference on that generation, and reclaiming never drops a generation
// in use: so a generation that can be dropped holds no entry that is only
// in its log. Writing runs on the commit path cost a tenth of the
// throughput in fsyncs. At Open, the log keys at or after the newest
// run's watermark are read back. Under --sync=interval a run is written
// only after the generation of its log is fsynced, so that no run names
// an event a power cut could take back.
//
// Lookups must cost little, since every event with a messageId takes one.
// A key is 8 bytes of xxhash of the write key and messageId, whatever the
// id's length (see dedupeKey for the odds of a collision). The newest
// entries are in a map; older ones in runs: sorted files of (key, stored
// second) pairs, with every dedupeSparse-th key in
// memory, so that looking one up is one read of under a KiB. In front of
// the runs are two blocked Bloom filters, one per epoch (half the
// index's capacity): nearly every new key is known absent after two cache
// lines, and a full epoch is dropped whole, with its filter, so the
// filters never fill with entries long gone.

const (
	// SourceHTTP and SourceKafka label spillway_events_deduplicated_total.
	SourceHTTP  = "http"
	SourceKafka = "kafka"

	// DefaultDedupeWindow and DefaultDedupeMaxBytes are the flags'
	// defaults: Segment removes duplicates over a day.
	DefaultDedupeWindow   = 24 * time.Hour
	DefaultDedupeMaxBytes = 64 << 20
	// MinDedupeMaxBytes is the smallest bound taken: a few runs' worth.
	MinDedupeMaxBytes = 64 << 10

	prefixDedupeLog = 'x' // 'x' | first seq (8) -> stored unix s (4) | count (4) | keys (8 each) | zeroes; generations

	dedupeEntryBytes = 12 // key (8) | stored unix seconds (4)
	dedupeSparse     = 64 // entries per sparse index slot: one read of 768 bytes
	dedupeRunHeader  = 48
	dedupeRunVersion = 1
	// dedupeOpenMax bounds the entries held in the map between runs, and
	// so its memory (about 1 MiB).
	dedupeOpenMax = 32 << 10
	// dedupeMergeBelow: a new run is merged into the newest one while that
	// is smaller, so that at low load runs (each an open file and a
	// lookup on a filter hit) stay few.
	dedupeMergeBelow = 512 << 10
	// dedupeFilterBits is the filters' size per entry: about 3% false
	// positives, each a lookup in the runs of its epoch.
	dedupeFilterBits = 8
)

var dedupeMagic = [4]byte{'S', 'P', 'D', 'X'}

// dedupeKey is the index's key for an event. Two different ids with the
// same key would skip an event that is not a duplicate: a new key meets
// one of the n held with odds n/2^64, 3e-13 for a full 64 MiB index
// (5.6 million keys), so one event in about 3e12, one every four months
// at a sustained 260k events/s. Twelve bytes a key would make it rarer
// still at 40% more bytes a key, so a shorter window.
func dedupeKey(writeKey string, messageID []byte) uint64 {
	var d xxhash.Digest
	d.Reset()
	_, _ = d.WriteString(writeKey)
	_, _ = d.Write([]byte{0}) // no key and id run together as another pair
	_, _ = d.Write(messageID)
	return d.Sum64()
}

func dedupeLogKey(first uint64) []byte {
	k := make([]byte, 9)
	k[0] = prefixDedupeLog
	binary.BigEndian.PutUint64(k[1:], first)
	return k
}

type dedupeIndex struct {
	dir      string
	window   time.Duration
	maxBytes int64
	capacity int // entries per epoch
	openMax  int // keys held in memory before a run is written
	now      func() time.Time
	log      *slog.Logger

	deduplicated *prometheus.CounterVec

	mu sync.Mutex
	// pending holds, under the spool's fillMu, the keys of events
	// submitted and not yet committed, a map per group: dropped whole
	// once the group is settled, never deleted from key by key. settled
	// is the newest group settled: groups settle in order, and claim
	// drops their maps, so that the committer never waits for fillMu.
	pending []pendingGroup
	// freePending holds settled groups' maps, emptied, for the next
	// groups: a map a group was most of what claims allocated.
	freePending []map[uint64]struct{}
	settled     atomic.Uint64
	// commits counts the groups settled, so that a submitter knows
	// whether what it looked up before taking fillMu may have changed.
	commits atomic.Uint64
	// open holds the keys committed since they were last frozen, with
	// their stored second; frozen, oldest first, the maps of keys on their
	// way into a run, which flushLoop writes.
	open   map[uint64]uint32
	frozen []*frozenKeys
	// spare is the map of the last frozen keys written, emptied: the next
	// open map, whose buckets at full load were a tenth of what the spool
	// allocated.
	spare  map[uint64]uint32
	epochs []*dedupeEpoch // oldest first; at most two
	// watermark is the sequence number below which every committed key is
	// in a run.
	watermark uint64
	bytes     int64 // of the runs
	// lastFailed is the newest group whose commit failed, and failedErr
	// why: a request that skipped a key pending in that group or before
	// must fail too, since its event was not stored after all.
	lastFailed uint64
	failedErr  error
	// forgotten is the newest stored second of the entries dropped for
	// room: the window held reaches back to it.
	forgotten uint32
	nextEpoch uint64
	page      []byte

	kick    chan struct{} // wakes flushLoop
	closing chan struct{} // closed when the writer has stopped
}

// frozenKeys are committed keys on their way into a run: watermark is the
// sequence number after the last event committed when they were frozen,
// and gen the generation whose log holds them, held (acquired) until they
// are in a run, so that it is not dropped before.
type frozenKeys struct {
	keys      map[uint64]uint32
	watermark uint64
	gen       *generation
}

type dedupeEpoch struct {
	num     uint64
	filter  blockedBloom
	entries int // inserted into filter
	runs    []*dedupeRun
}

func dedupeDir(spoolDir string) string { return filepath.Join(spoolDir, "dedupe") }

func runName(epoch, watermark uint64) string {
	return fmt.Sprintf("run-%020d-%020d", epoch, watermark)
}

// openDedupe opens the index in spoolDir, or removes it when window is 0
// (off). The spool's generations must be recovered: what their logs hold
// past the newest run is read back.
func (s *Spool) openDedupe(reg prometheus.Registerer) (*dedupeIndex, error) {
	dir := dedupeDir(s.cfg.Dir)
	d := &dedupeIndex{
		dir:      dir,
		window:   s.cfg.DedupeWindow,
		maxBytes: s.cfg.DedupeMaxBytes,
		now:      s.cfg.now,
		log:      s.log,
		openMax:  dedupeOpenMax,
		kick:     make(chan struct{}, 1),
		closing:  make(chan struct{}),
		open:     map[uint64]uint32{},
		deduplicated: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "spillway_events_deduplicated_total",
			Help: "Events not stored because an event with the same write key and messageId was stored within --dedupe-window, by source (http, kafka).",
		}, []string{"source"}),
	}
	if d.now == nil {
		d.now = time.Now
	}
	if d.maxBytes == 0 {
		d.maxBytes = DefaultDedupeMaxBytes
	}
	d.capacity = dedupeCapacity(d.maxBytes)
	for _, src := range []string{SourceHTTP, SourceKafka} {
		d.deduplicated.WithLabelValues(src)
	}
	if d.window == 0 {
		// Off, the index is left as it is: the dlq commands open a stopped
		// spool without the server's flags, and must not wipe it. Turned
		// on again, its entries are as good as they were.
		d.register(reg)
		return d, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create dedupe dir: %w", err)
	}
	if err := sweepTemporary(dir); err != nil {
		return nil, err
	}
	if err := d.loadRuns(); err != nil {
		d.close()
		return nil, err
	}
	if err := s.replayDedupeLog(d); err != nil {
		d.close()
		return nil, err
	}
	if len(d.open) > 0 {
		// Into a run now: the generations they were read from are held by
		// nothing, and may be dropped once delivered.
		d.frozen = append(d.frozen, &frozenKeys{keys: d.open, watermark: s.next})
		d.open = map[uint64]uint32{}
		if err := d.flushFrozen(s.cfg.Sync); err != nil {
			d.close()
			return nil, err
		}
	}
	d.register(reg)
	s.spawn(func() { d.flushLoop(s.cfg.Sync) })
	return d, nil
}

func (d *dedupeIndex) register(reg prometheus.Registerer) {
	if reg == nil {
		return
	}
	reg.MustRegister(d.deduplicated,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "spillway_dedupe_window_seconds",
			Help: "How far back every stored messageId is remembered: --dedupe-window, less when --dedupe-max-bytes made the oldest entries go; 0 when off.",
		}, d.windowHeld),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "spillway_dedupe_index_bytes",
			Help: "Size of the messageId index's files on disk (bounded by --dedupe-max-bytes).",
		}, func() float64 {
			d.mu.Lock()
			defer d.mu.Unlock()
			return float64(d.bytes)
		}))
}

func (d *dedupeIndex) enabled() bool { return d != nil && d.window > 0 }

// cutoff is the oldest stored second still within the window.
func (d *dedupeIndex) cutoff() uint32 {
	return unixSeconds(d.now().Add(-d.window))
}

func unixSeconds(t time.Time) uint32 { return uint32(max(0, t.Unix())) }

func (d *dedupeIndex) windowHeld() float64 {
	if !d.enabled() {
		return 0
	}
	d.mu.Lock()
	forgotten := d.forgotten
	d.mu.Unlock()
	held := d.window
	if forgotten > 0 {
		held = min(held, max(0, d.now().Sub(time.Unix(int64(forgotten)+1, 0))))
	}
	return held.Seconds()
}

type pendingGroup struct {
	group uint64
	keys  map[uint64]struct{}
}

// dedupeLookup is what lookup found of a call's events, before the call
// takes fillMu: the keys of the events with a MessageID, their indexes,
// and whether each was already stored.
type dedupeLookup struct {
	keys    []uint64
	index   []int
	stored  []bool
	commits uint64
}

// lookup hashes the events' ids and looks them up among the stored keys.
// It runs before the submitter takes fillMu, which every submitter
// shares: held for these lookups, it cost a fifth of the throughput.
func (d *dedupeIndex) lookup(events []Event) *dedupeLookup {
	l := lookups.Get().(*dedupeLookup)
	l.keys, l.index, l.stored = l.keys[:0], l.index[:0], l.stored[:0]
	for i := range events {
		if len(events[i].MessageID) > 0 {
			l.keys = append(l.keys, dedupeKey(events[i].WriteKey, events[i].MessageID))
			l.index = append(l.index, i)
		}
	}
	if len(l.keys) == 0 {
		return l
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	l.commits = d.commits.Load()
	cutoff := d.cutoff()
	for _, k := range l.keys {
		l.stored = append(l.stored, d.stored(k, cutoff))
	}
	return l
}

// lookups keep a request's lookup slices for the next: at full load they
// were half of what the index allocated per request.
var lookups = sync.Pool{New: func() any { return new(dedupeLookup) }}

// done returns l to its pool; l is not used after.
func (l *dedupeLookup) done() { lookups.Put(l) }

// claim completes lookup under fillMu, group being the filling group's
// number: it returns the indexes of the duplicates, ascending, and the
// oldest other group whose outcome they depend on (0: none). The other
// keys become pending in group and are appended to keys.
func (d *dedupeIndex) claim(l *dedupeLookup, group uint64, keys []uint64) (dups []int, relies uint64, _ []uint64) {
	if len(l.keys) == 0 {
		return nil, 0, keys
	}
	// Settled groups' keys are among the stored ones (or were not
	// stored). settled is read before commits: a group seen settled was
	// counted in commits, so its keys are looked up again below if lookup
	// ran before it.
	settled := d.settled.Load()
	for len(d.pending) > 0 && d.pending[0].group <= settled {
		if len(d.freePending) < 4 {
			clear(d.pending[0].keys)
			d.freePending = append(d.freePending, d.pending[0].keys)
		}
		d.pending[0] = pendingGroup{}
		d.pending = d.pending[1:]
	}
	// A group settled since lookup may have stored a key that was pending
	// then and is no more: look again at the stored keys.
	recheck := d.commits.Load() != l.commits
	var cutoff uint32
	if recheck {
		d.mu.Lock()
		defer d.mu.Unlock()
		cutoff = d.cutoff()
	}
	var cur map[uint64]struct{}
	if n := len(d.pending); n > 0 && d.pending[n-1].group == group {
		cur = d.pending[n-1].keys
	}
	for j, k := range l.keys {
		i := l.index[j]
		if l.stored[j] {
			dups = append(dups, i)
			continue
		}
		if g, ok := d.pendingIn(k); ok {
			dups = append(dups, i)
			if g != group && (relies == 0 || g < relies) {
				relies = g
			}
			continue
		}
		if recheck && d.stored(k, cutoff) {
			dups = append(dups, i)
			continue
		}
		if cur == nil {
			if n := len(d.freePending); n > 0 {
				cur, d.freePending = d.freePending[n-1], d.freePending[:n-1]
			} else {
				cur = make(map[uint64]struct{}, len(l.keys))
			}
			d.pending = append(d.pending, pendingGroup{group, cur})
		}
		cur[k] = struct{}{}
		keys = append(keys, k)
	}
	return dups, relies, keys
}

// pendingIn returns the group k is pending in. fillMu held.
func (d *dedupeIndex) pendingIn(k uint64) (uint64, bool) {
	for i := len(d.pending) - 1; i >= 0; i-- {
		if _, ok := d.pending[i].keys[k]; ok {
			return d.pending[i].group, true
		}
	}
	return 0, false
}

// stored reports whether k was committed at or after cutoff. d.mu held.
func (d *dedupeIndex) stored(k uint64, cutoff uint32) bool {
	if at, ok := d.open[k]; ok && at >= cutoff {
		return true
	}
	for _, f := range d.frozen {
		if at, ok := f.keys[k]; ok && at >= cutoff {
			return true
		}
	}
	for i := len(d.epochs) - 1; i >= 0; i-- {
		e := d.epochs[i]
		if !e.filter.has(k) {
			continue
		}
		for j := len(e.runs) - 1; j >= 0; j-- {
			r := e.runs[j]
			if r.newest < cutoff {
				break // older runs are older still
			}
			at, ok, err := r.find(k, &d.page)
			if err != nil {
				// Unreadable: treat the key as new. At worst an event is
				// stored twice, never dropped.
				d.log.Warn("read dedupe index", "run", filepath.Base(r.path), "err", err)
				continue
			}
			if ok && at >= cutoff {
				return true
			}
		}
	}
	return false
}

// settleDedupe records a group's outcome: its keys, pending until now,
// are stored as of at if err is nil, and forgotten otherwise. They are
// added to the stored keys before they leave the pending ones, so that a
// submitter always finds them in one or the other. Groups settle in
// order: the writer's, then the committer's.
func (s *Spool) settleDedupe(group uint64, keys []uint64, at time.Time, err error) {
	d := s.dedupe
	if !d.enabled() {
		return
	}
	sec := unixSeconds(at)
	if err == nil && len(keys) > 0 {
		d.mu.Lock()
		for _, k := range keys {
			d.open[k] = sec
		}
		d.commits.Add(1)
		d.mu.Unlock()
	} else if err != nil {
		d.mu.Lock()
		d.lastFailed, d.failedErr = max(d.lastFailed, group), err
		d.mu.Unlock()
	}
	d.settled.Store(group)
}

// failedSince returns why, if a group numbered relies or after failed to
// commit.
func (d *dedupeIndex) failedSince(relies uint64) error {
	if relies == 0 {
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.lastFailed >= relies {
		return fmt.Errorf("an earlier copy of an event in this request was not stored: %w", d.failedErr)
	}
	return nil
}

func (d *dedupeIndex) count(source string, n int) {
	if n > 0 && source != "" {
		d.deduplicated.WithLabelValues(source).Add(float64(n))
	}
}

// dedupeLogValue encodes a group's keys for its log key.
//
// It is padded to the generations' value threshold, so that it goes to
// the value log with the blocks: kept in the LSM tree, a small group's
// keys filled its 256 KiB memtable several times faster, and each flush
// of it stalled the commits (a third of the throughput at W2).
func dedupeLogValue(at time.Time, keys []uint64) []byte {
	v := make([]byte, 8, max(dedupeLogMinBytes, 8+8*len(keys)))
	binary.BigEndian.PutUint32(v, unixSeconds(at))
	binary.BigEndian.PutUint32(v[4:], uint32(len(keys)))
	for _, k := range keys {
		v = binary.BigEndian.AppendUint64(v, k)
	}
	return v[:cap(v)]
}

// dedupeLogMinBytes is badgerOptions' value threshold.
const dedupeLogMinBytes = 1 << 10

// freeze hands the committed keys to flushLoop, watermark being the
// sequence number after the last committed event and gen the active
// generation, which holds their log. Committer only: before it leaves a
// generation (force), and when the map is full and flushLoop idle.
func (d *dedupeIndex) freeze(watermark uint64, gen *generation, open func(dir string) (*badger.DB, error), force bool) {
	d.mu.Lock()
	if len(d.open) == 0 || !force && (len(d.open) < d.openMax || len(d.frozen) > 0) {
		d.mu.Unlock()
		return
	}
	d.mu.Unlock()
	// The writer holds the active generation: this only counts a reference.
	if _, err := gen.acquire(open); err != nil {
		gen = nil
	}
	d.mu.Lock()
	d.frozen = append(d.frozen, &frozenKeys{keys: d.open, watermark: watermark, gen: gen})
	if d.spare != nil {
		d.open, d.spare = d.spare, nil
	} else {
		d.open = make(map[uint64]uint32, min(len(d.open), d.openMax))
	}
	d.mu.Unlock()
	select {
	case d.kick <- struct{}{}:
	default:
	}
}

// flushLoop writes frozen keys into runs, off the commit path: a run's
// write and fsync took a tenth of the throughput there.
func (d *dedupeIndex) flushLoop(sync SyncMode) {
	defer d.close()
	for {
		select {
		case <-d.kick:
		case <-d.closing:
			if err := d.flushFrozen(sync); err != nil {
				d.log.Error("write messageId index at close", "err", err)
			}
			return
		}
		if err := d.flushFrozen(sync); err != nil {
			d.log.Error("write messageId index", "err", err)
		}
	}
}

// stop has flushLoop write what is frozen and close the index. The writer
// has stopped.
func (d *dedupeIndex) stop() {
	if d.enabled() {
		close(d.closing)
	}
}

// flushFrozen writes every frozen map of keys into a run, oldest first.
// Under --sync=interval the generation holding their log is fsynced
// first, so that a run never names an event a power cut could take. If a
// run cannot be written its keys are dropped, and the window gauge says
// so: after a restart, copies of those events would be stored again,
// never an event lost.
func (d *dedupeIndex) flushFrozen(sync SyncMode) error {
	var errs []error
	for {
		d.mu.Lock()
		if len(d.frozen) == 0 {
			d.mu.Unlock()
			return errors.Join(errs...)
		}
		f := d.frozen[0]
		d.mu.Unlock()
		var err error
		if sync == SyncInterval && f.gen != nil {
			f.gen.mu.Lock()
			if f.gen.db != nil {
				err = f.gen.db.Sync()
			}
			f.gen.mu.Unlock()
		}
		if err == nil {
			err = d.writeFrozen(f)
		}
		if err != nil {
			errs = append(errs, err)
			d.mu.Lock()
			d.frozen = d.frozen[1:]
			d.forgotten = max(d.forgotten, unixSeconds(d.now()))
			d.mu.Unlock()
		}
		if f.gen != nil {
			f.gen.release()
		}
	}
}

// writeFrozen writes f, the oldest frozen keys, into a run, merged into
// the newest run when that is small, and installs it in their place.
func (d *dedupeIndex) writeFrozen(f *frozenKeys) error {
	watermark := f.watermark
	d.mu.Lock()
	entries := make([]dedupeEntry, 0, len(f.keys))
	cutoff := d.cutoff()
	for k, at := range f.keys {
		if at >= cutoff {
			entries = append(entries, dedupeEntry{k, at})
		}
	}
	var merge *dedupeRun
	epoch := d.newestEpoch()
	if epoch != nil && epoch.entries+len(entries) > d.capacity {
		epoch = nil // full: a new epoch
	}
	if epoch != nil && len(epoch.runs) > 0 {
		if last := epoch.runs[len(epoch.runs)-1]; last.size < dedupeMergeBelow {
			merge = last
		}
	}
	// Room first, so that the bound holds on disk while the run is
	// written, next to the run it replaces.
	size := int64(dedupeRunHeader + len(entries)*dedupeEntryBytes)
	if merge != nil {
		size += merge.size - dedupeRunHeader
	}
	if !d.makeRoom(size, merge) {
		merge = nil
		d.makeRoom(size, nil)
	}
	if epoch != nil && !slices.Contains(d.epochs, epoch) {
		epoch = nil
	}
	if len(entries) == 0 {
		d.watermark = max(d.watermark, watermark)
		d.frozen = d.frozen[1:]
		d.keepSpare(f.keys)
		d.mu.Unlock()
		return nil
	}
	d.mu.Unlock()
	slices.SortFunc(entries, func(a, b dedupeEntry) int { return cmpUint64(a.key, b.key) })
	var epochNum uint64
	if epoch != nil {
		epochNum = epoch.num
	} else {
		d.mu.Lock()
		epochNum = d.nextEpoch
		d.mu.Unlock()
	}
	var old []byte // the merged run's entries; none without one
	if merge != nil {
		var err error
		if old, err = merge.entries(); err != nil {
			d.log.Warn("read dedupe run to merge; writing a new one", "run", filepath.Base(merge.path), "err", err)
			merge = nil
		}
	}
	run := appendMerged(make([]byte, dedupeRunHeader, dedupeRunHeader+len(old)+len(entries)*dedupeEntryBytes), old, entries, cutoff)
	r, err := writeRun(d.dir, epochNum, watermark, merge, run)
	if err != nil {
		return fmt.Errorf("write dedupe run: %w", err)
	}
	d.mu.Lock()
	if epoch == nil {
		epoch = &dedupeEpoch{num: epochNum, filter: newBlockedBloom(d.capacity)}
		d.nextEpoch++
		d.epochs = append(d.epochs, epoch)
	}
	// A few thousand at a time: the lookups wait for d.mu. A bit set
	// before the run is in place only sends a lookup to the runs, and
	// the key is still among the frozen ones.
	for len(entries) > 0 {
		n := min(len(entries), 4096)
		for _, e := range entries[:n] {
			epoch.filter.add(e.key)
		}
		epoch.entries += n
		entries = entries[n:]
		d.mu.Unlock()
		d.mu.Lock()
	}
	defer d.mu.Unlock()
	d.frozen = d.frozen[1:]
	d.keepSpare(f.keys)
	if merge != nil {
		epoch.runs[len(epoch.runs)-1] = r
		d.bytes -= merge.size
		merge.remove(d.log)
	} else {
		epoch.runs = append(epoch.runs, r)
	}
	d.bytes += r.size
	d.watermark = max(d.watermark, watermark)
	d.enforceBounds()
	return nil
}

// keepSpare keeps keys, written and no longer looked up, as the next open
// map. d.mu held.
func (d *dedupeIndex) keepSpare(keys map[uint64]uint32) {
	if d.spare == nil && len(keys) <= d.openMax {
		clear(keys)
		d.spare = keys
	}
}

// dropSpare lets go of the spare map, about 1 MiB after a burst, and of
// the room the open map kept for one: a map made for openMax keys stays
// that large (1.7 MiB) when it holds a burst's last few, and maps never
// shrink.
func (d *dedupeIndex) dropSpare() {
	if !d.enabled() {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.spare = nil
	if len(d.open) < d.openMax/4 {
		small := make(map[uint64]uint32, len(d.open)) // maps.Clone keeps the room
		maps.Copy(small, d.open)
		d.open = small
	}
}

// makeRoom drops the oldest runs until size more bytes fit, keeping keep;
// false if keep would have to go. d.mu held.
func (d *dedupeIndex) makeRoom(size int64, keep *dedupeRun) bool {
	d.dropOld(d.cutoff())
	for d.bytes+size > d.maxBytes {
		i := slices.IndexFunc(d.epochs, func(e *dedupeEpoch) bool { return len(e.runs) > 0 })
		if i < 0 {
			return true
		}
		e := d.epochs[i]
		if e.runs[0] == keep {
			return false
		}
		d.forget(e.runs[0])
		e.runs = e.runs[1:]
	}
	d.dropEmptyEpochs()
	return true
}

// enforceBounds keeps the index within its window, its byte bound and two
// epochs. d.mu held.
func (d *dedupeIndex) enforceBounds() {
	for len(d.epochs) > 2 {
		for _, r := range d.epochs[0].runs {
			d.forget(r)
		}
		d.epochs[0].filter.free()
		d.epochs = d.epochs[1:]
	}
	d.makeRoom(0, nil)
	d.dropEmptyEpochs()
}

// forget drops a run for room. d.mu held.
func (d *dedupeIndex) forget(r *dedupeRun) {
	d.forgotten = max(d.forgotten, r.newest)
	d.bytes -= r.size
	r.remove(d.log)
}

// dropOld removes the runs whose every entry is before cutoff. d.mu held.
func (d *dedupeIndex) dropOld(cutoff uint32) int {
	n := 0
	for _, e := range d.epochs {
		kept := e.runs[:0]
		for _, r := range e.runs {
			if r.newest < cutoff {
				d.bytes -= r.size
				r.remove(d.log)
				n++
				continue
			}
			kept = append(kept, r)
		}
		clear(e.runs[len(kept):])
		e.runs = kept
	}
	return n
}

// dropEmptyEpochs drops the epochs whose runs are all gone: their filters
// would only give false positives. d.mu held.
func (d *dedupeIndex) dropEmptyEpochs() {
	d.epochs = slices.DeleteFunc(d.epochs, func(e *dedupeEpoch) bool {
		if len(e.runs) == 0 {
			e.filter.free()
			return true
		}
		return false
	})
}

func (d *dedupeIndex) newestEpoch() *dedupeEpoch {
	if len(d.epochs) == 0 {
		return nil
	}
	return d.epochs[len(d.epochs)-1]
}

func (d *dedupeIndex) close() {
	if d == nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, e := range d.epochs {
		for _, r := range e.runs {
			_ = r.f.Close()
		}
		e.filter.free()
	}
	d.epochs = nil
}

// loadRuns opens the runs in d.dir: the two newest epochs, less what a
// merge replaced or the window has passed.
func (d *dedupeIndex) loadRuns() error {
	names, err := os.ReadDir(d.dir)
	if err != nil {
		return err
	}
	var runs []*dedupeRun
	for _, n := range names {
		if !strings.HasPrefix(n.Name(), "run-") {
			continue
		}
		r, err := openRun(filepath.Join(d.dir, n.Name()))
		if err != nil {
			// A run is renamed into place only once fsynced: this one was
			// damaged since. Its entries are lost; the window says so.
			d.log.Error("dedupe run unreadable; removing it", "run", n.Name(), "err", err)
			d.forgotten = unixSeconds(d.now())
			_ = os.Remove(filepath.Join(d.dir, n.Name()))
			continue
		}
		runs = append(runs, r)
	}
	replaced := map[uint64]bool{}
	for _, r := range runs {
		if r.replaces != 0 {
			replaced[r.replaces] = true
		}
	}
	slices.SortFunc(runs, func(a, b *dedupeRun) int {
		if a.epoch != b.epoch {
			return cmpUint64(a.epoch, b.epoch)
		}
		return cmpUint64(a.watermark, b.watermark)
	})
	for _, r := range runs {
		d.watermark = max(d.watermark, r.watermark)
		if replaced[r.watermark] {
			r.remove(d.log) // merged into a newer run; the crash came before its removal
			continue
		}
		e := d.newestEpoch()
		if e == nil || e.num != r.epoch {
			e = &dedupeEpoch{num: r.epoch, filter: newBlockedBloom(d.capacity)}
			d.epochs = append(d.epochs, e)
			d.nextEpoch = r.epoch + 1
		}
		stored, err := r.entries()
		if err != nil {
			return fmt.Errorf("read dedupe run %s: %w", filepath.Base(r.path), err)
		}
		for ; len(stored) >= dedupeEntryBytes; stored = stored[dedupeEntryBytes:] {
			e.filter.add(binary.BigEndian.Uint64(stored))
		}
		e.entries += r.count
		e.runs = append(e.runs, r)
		d.bytes += r.size
	}
	d.enforceBounds()
	return nil
}

// replayDedupeLog reads back the keys that were committed after the
// newest run was written, from the generations' logs. An entry a crash
// damaged (with --sync=interval a power cut may take the value-log bytes
// its key points to) is forgotten, not fatal: its events may be stored
// again if they are sent again, and spillway starts.
func (s *Spool) replayDedupeLog(d *dedupeIndex) error {
	for _, g := range s.gens {
		db, err := g.acquire(s.openFinished)
		if err != nil {
			return err
		}
		err = db.View(func(txn *badger.Txn) error {
			it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefixDedupeLog}})
			defer it.Close()
			for it.Seek(dedupeLogKey(d.watermark)); it.Valid(); it.Next() {
				v, err := it.Item().ValueCopy(nil)
				if err == nil && (len(v) < 8 || len(v) < 8+8*int(binary.BigEndian.Uint32(v[4:]))) {
					err = fmt.Errorf("%w: dedupe log entry of %d bytes", errCorrupt, len(v))
				}
				if err != nil {
					s.log.Warn("dedupe log entry unreadable after a crash; its messageIds are forgotten",
						"generation", filepath.Base(g.dir), "err", err)
					d.forgotten = unixSeconds(d.now())
					continue
				}
				at, n := binary.BigEndian.Uint32(v), int(binary.BigEndian.Uint32(v[4:]))
				for i := range n {
					d.open[binary.BigEndian.Uint64(v[8+8*i:])] = at
				}
			}
			return nil
		})
		g.release()
		if g != s.active {
			g.closeIfUnused(s.log)
		}
		if err != nil {
			return fmt.Errorf("read dedupe log of %s: %w", filepath.Base(g.dir), err)
		}
	}
	return nil
}

// freezeDedupe hands the committed messageId keys to the index's
// flushLoop: before the writer leaves a generation (force), so that a
// generation that may be dropped holds no key that is only in its log,
// and when enough have gathered. Committer only.
func (s *Spool) freezeDedupe(force bool) {
	if !s.dedupe.enabled() {
		return
	}
	s.mu.Lock()
	next := s.next
	s.mu.Unlock()
	s.dedupe.freeze(next, s.active, s.openGeneration, force)
}
