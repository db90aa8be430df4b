package sources

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/spillwayhq/spillway/internal/testkit"
	"github.com/spillwayhq/spillway/spool"
)

const (
	testTopic = "events"
	testGroup = "relays"
)

func newCluster(t *testing.T, brokers, partitions int) *kfake.Cluster {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(brokers), kfake.SeedTopics(int32(partitions), testTopic))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// produced is where each record went, by messageId.
type produced struct {
	at map[string]position
	// ids is each partition's messageIds by offset.
	ids map[int32][]string
}

type position struct {
	partition int32
	offset    int64
	writeKey  string
}

// produce writes n records as spillway's Kafka destination does: the
// event's JSON as the value, keyed by userId, with the type, messageId
// and writeKey headers. pad adds that many random (incompressible) bytes
// to each event.
func produce(t *testing.T, c *kfake.Cluster, prefix string, n, pad int) *produced {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.DefaultProduceTopic(testTopic))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	recs := make([]*kgo.Record, n)
	for i := range recs {
		id, user, key := fmt.Sprintf("%s-%d", prefix, i), fmt.Sprintf("user-%d", i%13), fmt.Sprintf("wk-%d", i%3)
		ev := map[string]any{"type": "track", "event": "Order Completed", "userId": user, "messageId": id}
		if pad > 0 {
			b := make([]byte, pad*3/4)
			rand.Read(b)
			ev["properties"] = map[string]any{"blob": base64.StdEncoding.EncodeToString(b)}
		}
		v, _ := json.Marshal(ev)
		recs[i] = &kgo.Record{Key: []byte(user), Value: v, Headers: []kgo.RecordHeader{
			{Key: "type", Value: []byte("track")}, {Key: "messageId", Value: []byte(id)}, {Key: "writeKey", Value: []byte(key)},
		}}
	}
	res := cl.ProduceSync(t.Context(), recs...)
	if err := res.FirstErr(); err != nil {
		t.Fatal(err)
	}
	p := &produced{at: map[string]position{}, ids: map[int32][]string{}}
	for _, r := range res {
		id := string(r.Record.Headers[1].Value)
		p.at[id] = position{r.Record.Partition, r.Record.Offset, string(r.Record.Headers[2].Value)}
		ids := p.ids[r.Record.Partition]
		for int64(len(ids)) <= r.Record.Offset {
			ids = append(ids, "")
		}
		ids[r.Record.Offset] = id
		p.ids[r.Record.Partition] = ids
	}
	return p
}

// add records where q's records went.
func (p *produced) add(q *produced) {
	for id, at := range q.at {
		p.at[id] = at
		ids := p.ids[at.partition]
		for int64(len(ids)) <= at.offset {
			ids = append(ids, "")
		}
		ids[at.offset] = id
		p.ids[at.partition] = ids
	}
}

func openSpool(t *testing.T, maxBytes int64) *spool.Spool {
	t.Helper()
	// --sync=interval: what is under test is what the source does with
	// Submit's answers, not the disk's fsync, which the machine's other
	// work can make take a second.
	sp, err := spool.Open(spool.Config{Dir: t.TempDir(), MaxBytes: maxBytes, Sync: spool.SyncInterval, Consumers: []string{"d"}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sp.Close(context.Background()) })
	return sp
}

func startSource(t *testing.T, c *kfake.Cluster, sp Store, logs *testkit.Buffer, tweaks ...func(*kafkaSource)) (*Group, *metrics) {
	t.Helper()
	src, err := ParseSource("kafka://" + strings.Join(c.ListenAddrs(), ",") + "/" + testTopic + "?group=" + testGroup)
	if err != nil {
		t.Fatal(err)
	}
	g, err := New([]Source{src}, sp, logs.Logger(t), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	for _, tweak := range tweaks {
		tweak(g.srcs[0])
	}
	g.Start()
	return g, g.srcs[0].m
}

// stored reads what the spool holds for consumer d, records after records.
type stored struct {
	sp    *spool.Spool
	recs  []spool.Record
	count map[string]int
}

func (s *stored) read(t *testing.T) {
	t.Helper()
	for {
		recs, err := s.sp.Read("d", 500, 4<<20)
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) == 0 {
			return
		}
		for _, r := range recs {
			var ev struct{ MessageID string }
			if err := json.Unmarshal(r.Data, &ev); err != nil {
				t.Fatalf("stored event %s: %v", r.Data, err)
			}
			s.count[ev.MessageID]++
			s.recs = append(s.recs, spool.Record{Seq: r.Seq, WriteKey: r.WriteKey, Data: []byte(ev.MessageID)})
		}
	}
}

// committedWithinStored fails unless every record below each partition's
// committed offset is in the spool: nothing committed that is not durable.
func committedWithinStored(t *testing.T, c *kfake.Cluster, p *produced, s *stored) map[int32]int64 {
	t.Helper()
	commits := map[int32]int64{}
	info := c.GroupInfo(testGroup)
	if info == nil {
		return commits
	}
	for part, gc := range info.Commits[testTopic] {
		commits[part] = gc.Offset
		ids := p.ids[part]
		for off := int64(0); off < gc.Offset; off++ {
			if off >= int64(len(ids)) {
				t.Fatalf("partition %d committed at %d, past the %d events produced to it", part, gc.Offset, len(ids))
			}
			if id := ids[off]; s.count[id] == 0 {
				t.Fatalf("partition %d committed at %d, but its record at %d (%s) is not in the spool", part, gc.Offset, off, id)
			}
		}
	}
	return commits
}

// TestSourceStoresEveryRecordInPartitionOrderAndCommitsIt: records as the
// Kafka destination writes them end in the spool as events, each once,
// with the write key of its header, in the order of its partition; a
// record that is not an event ends in the dead-letter store; and the
// group's committed offsets reach the end of every partition.
func TestSourceStoresEveryRecordInPartitionOrderAndCommitsIt(t *testing.T) {
	c := newCluster(t, 1, 3)
	p := produce(t, c, "m", 3000, 0)
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	bad := cl.ProduceSync(t.Context(), &kgo.Record{Topic: testTopic, Value: []byte("not an event"),
		Headers: []kgo.RecordHeader{{Key: "writeKey", Value: []byte("wk-bad")}}})
	cl.Close()
	if err := bad.FirstErr(); err != nil {
		t.Fatal(err)
	}
	badRec := bad[0].Record
	// Its offset holds no event: the dead letter stands for it.
	p.ids[badRec.Partition] = append(p.ids[badRec.Partition], "invalid")

	sp := openSpool(t, 0)
	var logs testkit.Buffer
	g, m := startSource(t, c, sp, &logs)
	s := &stored{sp: sp, count: map[string]int{}}
	testkit.Eventually(t, func() bool { s.read(t); return len(s.count) == len(p.at) }, "every record in the spool: %d of %d",
		func() any { return len(s.count) }, len(p.at))

	last := map[int32]int64{}
	for _, r := range s.recs {
		id := string(r.Data)
		at := p.at[id]
		if s.count[id] != 1 {
			t.Errorf("%s stored %d times", id, s.count[id])
		}
		if r.WriteKey != at.writeKey {
			t.Errorf("%s stored with write key %q, want its header's %q", id, r.WriteKey, at.writeKey)
		}
		if prev, ok := last[at.partition]; ok && at.offset <= prev {
			t.Errorf("%s (partition %d offset %d) stored after offset %d", id, at.partition, at.offset, prev)
		}
		last[at.partition] = at.offset
	}
	var dead []spool.DeadLetter
	testkit.Eventually(t, func() bool {
		dead = dead[:0]
		_ = sp.DeadLetters(spool.Filter{Reason: spool.ReasonInvalid}, func(d spool.DeadLetter) error { dead = append(dead, d); return nil })
		return len(dead) == 1
	}, "the invalid record in the dead-letter store")
	s.count["invalid"] = 1
	want := fmt.Sprintf("kafka record %s/%d at offset %d", testTopic, badRec.Partition, badRec.Offset)
	if !strings.Contains(dead[0].Error, want) || dead[0].WriteKey != "wk-bad" || string(dead[0].Event) != `"not an event"` {
		t.Errorf("dead letter %+v, want one naming %q with its write key and value", dead[0], want)
	}

	hwm := map[int32]int64{}
	for _, pi := range c.PartitionInfos(testTopic) {
		hwm[pi.Partition] = pi.HighWatermark
	}
	testkit.Eventually(t, func() bool {
		commits := committedWithinStored(t, c, p, s)
		for part, end := range hwm {
			if commits[part] != end {
				return false
			}
		}
		return true
	}, "offsets committed up to the end of every partition: %v", hwm)
	if got := testutil.ToFloat64(m.records.WithLabelValues(testTopic, outcomeStored)); got != 3000 {
		t.Errorf("spillway_source_records_total{outcome=stored} = %v, want 3000", got)
	}
	if got := testutil.ToFloat64(m.records.WithLabelValues(testTopic, outcomeInvalid)); got != 1 {
		t.Errorf("spillway_source_records_total{outcome=invalid} = %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.partitions.WithLabelValues(testTopic)); got != 3 {
		t.Errorf("spillway_source_partitions = %v, want 3", got)
	}
	if lag := g.srcs[0].commitLag(); lag != 0 {
		t.Errorf("commit lag %d once everything is committed, want 0", lag)
	}
	if err := g.Stop(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// TestFullSpoolPausesFetchingAndCommitsNothingBeyondWhatIsStored: a spool
// that fills (its destination never acknowledging) pauses the source, and
// while it waits the group's offsets cover only what the spool holds;
// once the destination catches up the source resumes, and every record
// arrives once, nothing lost and nothing doubled by the pause.
func TestFullSpoolPausesFetchingAndCommitsNothingBeyondWhatIsStored(t *testing.T) {
	c := newCluster(t, 1, 3)
	const n = 1500
	p := produce(t, c, "f", n, 3000) // 4.5 MB of incompressible events
	sp := openSpool(t, 2<<20)
	var logs testkit.Buffer
	g, m := startSource(t, c, sp, &logs)
	defer g.Stop(context.Background())
	s := &stored{sp: sp, count: map[string]int{}}

	testkit.Eventually(t, func() bool { return testutil.ToFloat64(m.paused.WithLabelValues(testTopic)) == 1 }, "the source paused")
	s.read(t)
	if len(s.count) == 0 || len(s.count) >= n {
		t.Fatalf("paused with %d of %d records stored", len(s.count), n)
	}
	// While it waits, what it stored is committed, and nothing more.
	var commits map[int32]int64
	testkit.Eventually(t, func() bool {
		s.read(t)
		commits = committedWithinStored(t, c, p, s)
		var sum int64
		for _, off := range commits {
			sum += off
		}
		return sum == int64(len(s.count))
	}, "the stored records' offsets committed while paused")
	if testutil.ToFloat64(m.paused.WithLabelValues(testTopic)) != 1 {
		t.Fatal("the source resumed while its spool was full")
	}
	t.Logf("paused with %d of %d records in the full spool; committed %v", len(s.count), n, commits)

	// The destination catches up: everything read is acknowledged.
	testkit.Eventually(t, func() bool {
		s.read(t)
		if len(s.recs) > 0 {
			if err := sp.Ack("d", s.recs[len(s.recs)-1].Seq+1); err != nil {
				t.Fatal(err)
			}
		}
		committedWithinStored(t, c, p, s)
		return len(s.count) == n
	}, "every record stored once the spool had room: %d of %d", func() any { return len(s.count) }, n)
	if !strings.Contains(logs.String(), "fetching resumed") {
		t.Errorf("no resume logged: %s", logs.String())
	}
	for id, k := range s.count {
		if k != 1 {
			t.Errorf("%s stored %d times", id, k)
		}
	}
	testkit.Eventually(t, func() bool {
		commits := committedWithinStored(t, c, p, s)
		for part, ids := range p.ids {
			if commits[part] != int64(len(ids)) {
				return false
			}
		}
		return true
	}, "offsets committed up to the end of every partition")
}

// failingStore is the spool with some chunks failing: refused by Submit
// (every seventh, as when the spool turns full between Ready and Submit),
// or taken and then not stored (every eleventh, as when a commit fails).
// Submit is called from the source's goroutine only.
type failingStore struct {
	*spool.Spool
	refuse, fail error // nil: that failure is not injected
	calls        int
}

func (f *failingStore) SubmitFrom(source string, events []spool.Event, dead []spool.DeadLetter) (<-chan error, int, error) {
	f.calls++
	switch {
	case f.refuse != nil && f.calls%7 == 3:
		return nil, 0, f.refuse
	case f.fail != nil && f.calls%11 == 5:
		done := make(chan error, 1)
		done <- f.fail
		return done, 0, nil
	}
	return f.Spool.SubmitFrom(source, events, dead)
}

// TestRecordsNotStoredAreFetchedAgain: the records of a chunk that is not
// stored, and those after it in its poll, are rewound, not held or
// skipped: every record is stored, and no offset is committed past what is
// stored. A chunk refused by Submit ends the poll, so that each partition
// is stored in its order; a chunk that fails once taken may be followed
// by one that was stored, whose records are then stored again after the
// failed ones: copies, out of order.
func TestRecordsNotStoredAreFetchedAgain(t *testing.T) {
	diskErr := errors.New("write block: input/output error")
	for name, f := range map[string]*failingStore{
		"refused as full":         {refuse: spool.ErrFull},
		"refused by a disk error": {refuse: diskErr},
		"failed once taken":       {fail: diskErr},
	} {
		t.Run(name, func(t *testing.T) {
			c := newCluster(t, 3, 6)
			const n, rounds = 1200, 2
			f.Spool = openSpool(t, 0)
			var logs testkit.Buffer
			// Chunks of 8 KiB: a poll holds several.
			g, _ := startSource(t, c, f, &logs, func(s *kafkaSource) { s.chunkBytes = 8 << 10 })
			defer g.Stop(context.Background())
			s := &stored{sp: f.Spool, count: map[string]int{}}
			p := &produced{at: map[string]position{}, ids: map[int32][]string{}}
			for i := range rounds {
				// In rounds, so that the source polls several times.
				p.add(produce(t, c, fmt.Sprintf("r%d", i), n/rounds, 0))
				testkit.Eventually(t, func() bool {
					s.read(t)
					committedWithinStored(t, c, p, s)
					return len(s.count) == len(p.at)
				}, "round %d stored", i)
			}
			if !strings.Contains(logs.String(), "rewound records not stored") {
				t.Fatal("no chunk failed: the test proves nothing")
			}
			last := map[int32]int64{}
			seen := map[string]bool{}
			copies, late := 0, 0
			for _, r := range s.recs {
				id := string(r.Data)
				at := p.at[id]
				if prev, ok := last[at.partition]; ok && at.offset <= prev {
					if seen[id] {
						copies++
					} else {
						late++
					}
				}
				seen[id] = true
				last[at.partition] = at.offset
			}
			t.Logf("%d chunks submitted for %d records: %d stored again, %d stored after a later record of their partition", f.calls, n, copies, late)
			if f.refuse != nil && copies+late > 0 {
				t.Errorf("chunks refused by Submit led to %d copies and %d records out of order, want none", copies, late)
			}
		})
	}
}

// TestRecordsReadTwiceAreStoredOnce: the same records in the topic twice
// (a sidecar that sent a batch again, or records read again after a
// rebalance) are stored once, by their messageId, and counted.
func TestRecordsReadTwiceAreStoredOnce(t *testing.T) {
	c := newCluster(t, 1, 3)
	p := produce(t, c, "twice", 400, 0)
	produce(t, c, "twice", 400, 0)
	reg := prometheus.NewRegistry()
	sp, err := spool.Open(spool.Config{Dir: t.TempDir(), Sync: spool.SyncInterval, Consumers: []string{"d"}, DedupeWindow: spool.DefaultDedupeWindow}, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sp.Close(context.Background()) })
	var logs testkit.Buffer
	g, m := startSource(t, c, sp, &logs)
	testkit.Eventually(t, func() bool {
		return testutil.ToFloat64(m.records.WithLabelValues(testTopic, outcomeStored)) == 400 && g.srcs[0].commitLag() == 0
	}, "the 800 records consumed: stored %v, lag %v", func() any { return testutil.ToFloat64(m.records.WithLabelValues(testTopic, outcomeStored)) }, func() any { return g.srcs[0].commitLag() })
	if err := g.Stop(t.Context()); err != nil {
		t.Fatal(err)
	}
	s := &stored{sp: sp, count: map[string]int{}}
	s.read(t)
	if len(s.recs) != len(p.at) {
		t.Errorf("stored %d events of 400 distinct ones sent twice", len(s.recs))
	}
	for id, n := range s.count {
		if n != 1 {
			t.Errorf("%s stored %d times", id, n)
		}
	}
	if got := gathered(t, reg, "spillway_events_deduplicated_total", "source", spool.SourceKafka); got != 400 {
		t.Errorf("spillway_events_deduplicated_total{source=kafka} = %v, want 400", got)
	}
}

// gathered is the value of the metric name whose label has value.
func gathered(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no %s{%s=%q}", name, label, value)
	return 0
}
