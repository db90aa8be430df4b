package forwarders

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spillwayhq/spillway/internal/testkit"
	"github.com/spillwayhq/spillway/spool"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// kafkaOpts keep retries and flushes in milliseconds; the timeout, the
// default, leaves franz-go room for its own retries inside one Send, on a
// loaded machine too.
const kafkaOpts = "batch_events=50&flush=5ms&timeout=10s&backoff_min=5ms&backoff_max=100ms"

// status prints a group's first destination's status when formatted, so
// that a failure message shows it as it was at the failure.
type status struct{ g *Group }

func (s status) String() string { return fmt.Sprintf("%+v", s.g.Status()[0]) }

// newKafkaCluster starts an in-process Kafka (real protocol, loopback)
// that never creates topics on its own unless opts say so.
func newKafkaCluster(t *testing.T, opts ...kfake.Opt) *kfake.Cluster {
	t.Helper()
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// newVirtualKafka is newKafkaCluster on an in-memory network, for tests
// in a testing/synctest bubble, with brokers listening on ports 19001 up;
// a client connects through dial.
func newVirtualKafka(t *testing.T, brokers int, opts ...kfake.Opt) (c *kfake.Cluster, dial func(context.Context, string, string) (net.Conn, error)) {
	t.Helper()
	var vn kfake.VirtualNetwork
	ports := make([]int, brokers)
	for i := range ports {
		ports[i] = 19001 + i
	}
	c = newKafkaCluster(t, append([]kfake.Opt{kfake.NumBrokers(brokers), kfake.Ports(ports...), kfake.ListenFn(vn.Listen)}, opts...)...)
	return c, vn.DialContext
}

func kafkaURL(c *kfake.Cluster, topic string, qs ...string) string {
	return "kafka://" + strings.Join(c.ListenAddrs(), ",") + "/" + topic + "?" + opts(append([]string{kafkaOpts}, qs...)...)
}

// kafkaEvent is one test event and where it must land.
type kafkaEvent struct {
	id   string
	user string // userId; empty for an anonymous event
	anon string // anonymousId
	n    int    // the event's place among its user's events
	data []byte
}

// key is the record key the default key=userId gives: userId, else
// anonymousId.
func (e kafkaEvent) key() string {
	if e.user != "" {
		return e.user
	}
	return e.anon
}

// kafkaEvents builds count events over users users, in spool order. Every
// fifth user is anonymous; the others carry an anonymousId too, which the
// key must not use.
func kafkaEvents(prefix string, count, users int) []kafkaEvent {
	out := make([]kafkaEvent, count)
	for i := range out {
		u := i % users
		e := kafkaEvent{id: fmt.Sprintf("%s-%05d", prefix, i), anon: fmt.Sprintf("anon-%d", u), n: i / users}
		if u%5 != 0 {
			e.user = fmt.Sprintf("user-%d", u)
		}
		e.data = fmt.Appendf(nil, `{"type":"track","event":"Order Completed","userId":%q,"anonymousId":%q,"messageId":%q,"properties":{"n":%d,"revenue":12.5}}`,
			e.user, e.anon, e.id, e.n)
		if e.user == "" {
			e.data = bytes.Replace(e.data, []byte(`"userId":"",`), nil, 1)
		}
		out[i] = e
	}
	return out
}

func appendKafkaEvents(t *testing.T, sp testStore, evs []kafkaEvent) {
	t.Helper()
	in := make([]spool.Event, len(evs))
	for i, e := range evs {
		in[i] = spool.Event{WriteKey: "wk-1", Data: e.data}
	}
	if err := sp.Append(t.Context(), in, nil); err != nil {
		t.Fatal(err)
	}
}

// consume reads the topic from the start until it holds every id in want
// (duplicates allowed) or timeout passes, and returns the records read, in
// offset order per partition. extra adds client options.
func consume(t *testing.T, c *kfake.Cluster, topic string, want []string, timeout time.Duration, extra ...kgo.Opt) []*kgo.Record {
	t.Helper()
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(c.ListenAddrs()...), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchMaxWait(100 * time.Millisecond)}, extra...)...)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	missing := make(map[string]bool, len(want))
	for _, id := range want {
		missing[id] = true
	}
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	var recs []*kgo.Record
	for len(missing) > 0 && ctx.Err() == nil {
		fs := cl.PollFetches(ctx)
		fs.EachError(func(topic string, p int32, err error) {
			if ctx.Err() == nil {
				t.Logf("fetch %s/%d: %v", topic, p, err)
			}
		})
		fs.EachRecord(func(r *kgo.Record) {
			recs = append(recs, r)
			delete(missing, headerValue(r, "messageId"))
		})
	}
	if len(missing) > 0 {
		t.Fatalf("%d of %d events never reached Kafka, e.g. %v", len(missing), len(want), firstKeys(missing, 5))
	}
	return recs
}

func firstKeys(m map[string]bool, n int) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out[:min(n, len(out))]
}

func headerValue(r *kgo.Record, key string) string {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

func kafkaIDs(evs []kafkaEvent) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = e.id
	}
	return out
}

// murmur2 is Kafka's own hash (Utils.murmur2), written out here so the test
// checks placement against the Java client's default partitioner, not
// against franz-go's code.
func murmur2(data []byte) int32 {
	const (
		seed uint32 = 0x9747b28c
		m    uint32 = 0x5bd1e995
		r           = 24
	)
	n := len(data)
	h := seed ^ uint32(n)
	for i := 0; i+4 <= n; i += 4 {
		k := uint32(data[i]) | uint32(data[i+1])<<8 | uint32(data[i+2])<<16 | uint32(data[i+3])<<24
		k *= m
		k ^= k >> r
		k *= m
		h *= m
		h ^= k
	}
	tail := n &^ 3
	switch n % 4 {
	case 3:
		h ^= uint32(data[tail+2]) << 16
		fallthrough
	case 2:
		h ^= uint32(data[tail+1]) << 8
		fallthrough
	case 1:
		h ^= uint32(data[tail])
		h *= m
	}
	h ^= h >> 13
	h *= m
	h ^= h >> 15
	return int32(h)
}

func kafkaPartition(key string, partitions int) int32 {
	return (murmur2([]byte(key)) & 0x7fffffff) % int32(partitions)
}

func TestKafkaMurmur2MatchesKafka(t *testing.T) {
	// Kafka's UtilsTest.testMurmur2.
	for in, want := range map[string]int32{
		"21": -973932308, "foobar": -790332482, "a-little-bit-long-string": -985981536,
		"a-little-bit-longer-string": -1486304829, "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971, "abc": 479470107,
	} {
		if got := murmur2([]byte(in)); got != want {
			t.Errorf("murmur2(%q) = %d, want %d", in, got, want)
		}
	}
}

// checkPlacement checks every consumed record against the events sent:
// value intact, key and headers as documented, each key on the partition
// Kafka's partitioner gives it, and each user's events in their order
// within the partition (first copies only: a retry may add a duplicate).
// It returns how many duplicates were read.
func checkPlacement(t *testing.T, recs []*kgo.Record, evs []kafkaEvent, partitions int) int {
	t.Helper()
	byID := make(map[string]kafkaEvent, len(evs))
	for _, e := range evs {
		byID[e.id] = e
	}
	seen := map[string]bool{}
	lastN := map[string]int{} // key -> last n read
	dups := 0
	slices.SortStableFunc(recs, func(a, b *kgo.Record) int {
		if a.Partition != b.Partition {
			return int(a.Partition - b.Partition)
		}
		return int(a.Offset - b.Offset)
	})
	for _, r := range recs {
		id := headerValue(r, "messageId")
		e, ok := byID[id]
		if !ok {
			t.Errorf("record %s/%d@%d with messageId %q was never sent", r.Topic, r.Partition, r.Offset, id)
			continue
		}
		if seen[id] {
			dups++
			continue
		}
		seen[id] = true
		if !bytes.Equal(r.Value, e.data) {
			t.Errorf("%s: value %s, want %s", id, r.Value, e.data)
		}
		if string(r.Key) != e.key() {
			t.Errorf("%s: key %q, want %q", id, r.Key, e.key())
		}
		if want := kafkaPartition(e.key(), partitions); r.Partition != want {
			t.Errorf("%s: key %q on partition %d, want %d", id, r.Key, r.Partition, want)
		}
		if typ, wk := headerValue(r, "type"), headerValue(r, "writeKey"); typ != "track" || wk != "wk-1" {
			t.Errorf("%s: headers type=%q writeKey=%q", id, typ, wk)
		}
		if last, ok := lastN[e.key()]; ok && e.n <= last {
			t.Errorf("%s: event %d of %q read after its event %d: order broken", id, e.n, e.key(), last)
		}
		lastN[e.key()] = e.n
	}
	return dups
}

func TestKafkaDeliversEveryEventWhereItsKeyPutsItInOrder(t *testing.T) {
	t.Parallel()
	const partitions = 8
	c := newKafkaCluster(t, kfake.NumBrokers(3), kfake.SeedTopics(partitions, "events"))
	sp := openSpool(t, t.TempDir(), "k")
	reg := prometheus.NewRegistry()
	evs := kafkaEvents("m", 2000, 37)
	// Several appends, so batches of many sizes meet Kafka.
	for i := 0; i < len(evs); i += 300 {
		appendKafkaEvents(t, sp, evs[i:min(i+300, len(evs))])
	}
	g := startGroup(t, sp, reg, "k="+kafkaURL(c, "events"))

	testkit.Eventually(t, func() bool { return sp.Backlog("k").Events == 0 }, "backlog %d", backlog(sp, "k"))
	recs := consume(t, c, "events", kafkaIDs(evs), 10*time.Second)
	if dups := checkPlacement(t, recs, evs, partitions); dups != 0 {
		t.Errorf("%d duplicates with no fault injected", dups)
	}
	for _, r := range recs {
		if r.Attrs.CompressionType() != 4 { // zstd, the default
			t.Fatalf("record batch compression %d, want zstd (4)", r.Attrs.CompressionType())
		}
	}
	if n := metric(t, reg, "spillway_events_delivered_total", "destination", "k"); int(n) != len(evs) {
		t.Errorf("delivered counter %v, want %d", n, len(evs))
	}
	if st := g.Status()[0]; st.Kind != KindKafka || st.State != StateUp || st.DeadLettered != 0 {
		t.Errorf("status %+v", st)
	}
	if err := shutdown(t, g, 5*time.Second); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}

func TestKafkaKeyChoices(t *testing.T) {
	c := newKafkaCluster(t, kfake.SeedTopics(4, "events"))
	data := []byte(`{"type":"identify","userId":"u-1","anonymousId":"a-1","messageId":"m-1"}`)
	anonOnly := []byte(`{"type":"page","anonymousId":"a-2","messageId":"m-2"}`)
	numeric := []byte(`{"type":"track","userId":12345,"messageId":"m-3"}`)
	for _, tc := range []struct {
		key  string
		want []string // keys of data, anonOnly, numeric
	}{
		{"", []string{"u-1", "a-2", "12345"}},
		{"userId", []string{"u-1", "a-2", "12345"}},
		{"anonymousId", []string{"a-1", "a-2", "12345"}},
		{"messageId", []string{"m-1", "m-2", "m-3"}},
	} {
		t.Run("key="+tc.key, func(t *testing.T) {
			spec := "k=" + kafkaURL(c, "events")
			if tc.key != "" {
				spec += "&key=" + tc.key
			}
			d, err := ParseDestination(spec, Defaults{})
			if err != nil {
				t.Fatal(err)
			}
			f, err := newKafka(d)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close(t.Context())
			for i, in := range [][]byte{data, anonOnly, numeric} {
				r := f.record(&spool.Record{Data: in})
				if string(r.Key) != tc.want[i] {
					t.Errorf("%s: key %q, want %q", in, r.Key, tc.want[i])
				}
			}
		})
	}
}

// TestKafkaLosesNothingThroughBrokerFaults injects broker failures and
// leader changes while events are produced, and checks that every event
// arrives, each user's in order. It runs on synctest's clock, on an
// in-memory network: franz-go's backoffs and metadata waits take no time.
func TestKafkaLosesNothingThroughBrokerFaults(t *testing.T) {
	t.Parallel()
	const partitions = 6
	scenarios := []struct {
		scenario string
		// during runs while events are appended and produced, until stop
		// is closed.
		during func(t *testing.T, c *kfake.Cluster, stop <-chan struct{})
	}{
		{
			scenario: "partition leaders move again and again",
			during: func(t *testing.T, c *kfake.Cluster, stop <-chan struct{}) {
				for i := int32(0); ; i++ {
					select {
					case <-stop:
						if i < 5 {
							t.Errorf("leaders moved %d times while events were produced, want several", i)
						}
						return
					case <-time.After(15 * time.Millisecond):
					}
					if i%2 == 0 {
						c.ShufflePartitionLeaders()
					} else if err := c.MoveTopicPartition("events", i%partitions, i%3); err != nil {
						t.Error(err)
					}
				}
			},
		},
		{
			scenario: "a broker leaves and a new one joins",
			during: func(t *testing.T, c *kfake.Cluster, stop <-chan struct{}) {
				time.Sleep(50 * time.Millisecond)
				if err := c.RemoveNode(1); err != nil {
					t.Error(err)
				}
				time.Sleep(100 * time.Millisecond)
				if _, _, err := c.AddNode(-1, 0); err != nil {
					t.Error(err)
				}
			},
		},
		{
			scenario: "produce requests fail with retriable errors, some after appending",
			during: func(t *testing.T, c *kfake.Cluster, stop <-chan struct{}) {
				h := c.Fault(
					// NOT_LEADER without naming the new leader: franz-go
					// waits for new metadata.
					kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Err: kerr.NotLeaderForPartition, Count: 3},
					// Appended, then answered as failed: the retry must
					// not duplicate (idempotent producer).
					kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Err: kerr.RequestTimedOut, Count: 5},
					kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Err: kerr.NotEnoughReplicas, Count: 5},
				)
				<-stop
				if h.Hits() == 0 {
					t.Error("no fault was hit")
				}
			},
		},
		{
			scenario: "the broker cuts connections on produce",
			during: func(t *testing.T, c *kfake.Cluster, stop <-chan struct{}) {
				var n atomic.Int32
				c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
					if n.Add(1) > 8 {
						c.DropControl()
						return nil, nil, false
					}
					c.KeepControl()
					return nil, errors.New("connection cut"), true
				})
				<-stop
				if n.Load() == 0 {
					t.Error("no produce request was cut")
				}
			},
		},
	}
	for _, sc := range scenarios {
		t.Run(sc.scenario, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				c, dial := newVirtualKafka(t, 3, kfake.SeedTopics(partitions, "events"))
				sp := newMemStore("k")
				// Uncompressed: franz-go's zstd decoders close bubbled
				// channels in finalizers, which run outside the bubble.
				d := parse(t, "k="+kafkaURL(c, "events", "compression=none"))
				d.Kafka.Dial = dial
				g := startDests(t, sp, nil, []Destination{d}, nil)
				evs := kafkaEvents("m", 3000, 41)

				stop := make(chan struct{})
				var wg sync.WaitGroup
				wg.Go(func() { sc.during(t, c, stop) })
				for i := 0; i < len(evs); i += 100 {
					appendKafkaEvents(t, sp, evs[i:i+100])
					time.Sleep(5 * time.Millisecond)
				}
				testkit.Eventually(t, func() bool { return sp.Backlog("k").Events == 0 },
					"status %v", status{g})
				close(stop)
				wg.Wait()

				recs := consume(t, c, "events", kafkaIDs(evs), 15*time.Second, kgo.Dialer(dial))
				dups := checkPlacement(t, recs, evs, partitions)
				st := g.Status()[0]
				t.Logf("%d events, %d records read, %d duplicates, %d retries", len(evs), len(recs), dups, st.Retried)
				if dl := deadLetters(t, sp, "k"); len(dl) > 0 {
					t.Errorf("%d dead letters, first %+v", len(dl), dl[0])
				}
			})
		})
	}
}

// TestKafkaMissingTopicIsMisconfiguredUntilCreated: spillway never creates
// the topic, even where the cluster would; until it exists the destination
// is misconfigured, nothing is dead-lettered, and once it exists everything
// is delivered. On synctest's clock, on an in-memory network.
func TestKafkaMissingTopicIsMisconfiguredUntilCreated(t *testing.T) {
	for _, tc := range []struct {
		scenario string
		opts     []kfake.Opt
	}{
		{"cluster without auto-creation", nil},
		{"cluster that would auto-create", []kfake.Opt{kfake.AllowAutoTopicCreation()}},
	} {
		t.Run(tc.scenario, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				c, dial := newVirtualKafka(t, 2, append([]kfake.Opt{kfake.SeedTopics(1, "other")}, tc.opts...)...)
				admin := adminClient(t, c, kgo.Dialer(dial))
				sp := newMemStore("k")
				reg := prometheus.NewRegistry()
				evs := kafkaEvents("m", 120, 7)
				appendKafkaEvents(t, sp, evs)
				d := parse(t, "k="+kafkaURL(c, "events", "backoff_max=200ms&compression=none"))
				d.Kafka.Dial = dial
				g := startDests(t, sp, reg, []Destination{d}, nil)

				testkit.Eventually(t, func() bool { return g.Status()[0].State == StateMisconfigured },
					"status %v", status{g})
				testkit.Eventually(t, func() bool {
					return metric(t, reg, "spillway_forward_retries_total", "destination", "k", "reason", "misconfigured") >= 2
				}, "no slow retry: %v", status{g})
				st := g.Status()[0]
				if st.State != StateMisconfigured || !strings.Contains(st.LastError, "UNKNOWN_TOPIC_OR_PARTITION") ||
					st.BacklogEvents != int64(len(evs)) || st.Delivered != 0 || st.DeadLettered != 0 {
					t.Errorf("while the topic is missing: %+v", st)
				}
				if up := metric(t, reg, "spillway_destination_up", "destination", "k"); up != 0 {
					t.Errorf("spillway_destination_up %v, want 0", up)
				}
				if n := metric(t, reg, "spillway_forward_retries_total", "destination", "k", "reason", "misconfigured"); n == 0 {
					t.Errorf("no misconfigured retry counted")
				}
				if topicExists(t, admin, "events") {
					t.Fatal("the topic was auto-created")
				}

				createTopic(t, admin, "events", 3, nil)
				testkit.Eventually(t, func() bool { return sp.Backlog("k").Events == 0 }, "after creating the topic: %v", status{g})
				recs := consume(t, c, "events", kafkaIDs(evs), 10*time.Second, kgo.Dialer(dial))
				checkPlacement(t, recs, evs, 3)
				if st := g.Status()[0]; st.State != StateUp || st.DeadLettered != 0 {
					t.Errorf("once the topic exists: %+v", st)
				}
			})
		})
	}
}

func adminClient(t *testing.T, c *kfake.Cluster, extra ...kgo.Opt) *kgo.Client {
	t.Helper()
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(c.ListenAddrs()...)}, extra...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl
}

func createTopic(t *testing.T, admin *kgo.Client, topic string, partitions int32, configs map[string]string) {
	t.Helper()
	req := kmsg.NewPtrCreateTopicsRequest()
	rt := kmsg.NewCreateTopicsRequestTopic()
	rt.Topic = topic
	rt.NumPartitions = partitions
	rt.ReplicationFactor = 1
	for k, v := range configs {
		cfg := kmsg.NewCreateTopicsRequestTopicConfig()
		cfg.Name, cfg.Value = k, kmsg.StringPtr(v)
		rt.Configs = append(rt.Configs, cfg)
	}
	req.Topics = append(req.Topics, rt)
	req.TimeoutMillis = 5000
	resp, err := req.RequestWith(t.Context(), admin)
	if err == nil {
		err = kerr.ErrorForCode(resp.Topics[0].ErrorCode)
	}
	if err != nil {
		t.Fatalf("create topic %s: %v", topic, err)
	}
}

func topicExists(t *testing.T, admin *kgo.Client, topic string) bool {
	t.Helper()
	req := kmsg.NewPtrMetadataRequest()
	rt := kmsg.NewMetadataRequestTopic()
	rt.Topic = kmsg.StringPtr(topic)
	req.Topics = append(req.Topics, rt)
	resp, err := req.RequestWith(t.Context(), admin)
	if err != nil {
		t.Fatal(err)
	}
	return resp.Topics[0].ErrorCode == 0
}

// TestKafkaRecordTooLargeIsDeadLetteredAlone: an event too large for the
// broker (the topic's max.message.bytes) or for the producer (batch_bytes)
// is dead-lettered with the reason, and every other event is delivered.
func TestKafkaRecordTooLargeIsDeadLetteredAlone(t *testing.T) {
	blob := make([]byte, 4500) // random, so compression cannot shrink it under the limit
	_, _ = rand.Read(blob)
	for _, tc := range []struct {
		scenario string
		configs  map[string]string
		opts     string
	}{
		{"the broker refuses the batch holding it", map[string]string{"max.message.bytes": "3000"}, "batch_events=20"},
		{"the producer refuses it before sending", nil, "batch_events=20&batch_bytes=2000"},
	} {
		t.Run(tc.scenario, func(t *testing.T) {
			c := newKafkaCluster(t)
			createTopic(t, adminClient(t, c), "events", 2, tc.configs)
			sp := openSpool(t, t.TempDir(), "k")
			reg := prometheus.NewRegistry()
			evs := kafkaEvents("m", 60, 5)
			big := &evs[33]
			big.data = fmt.Appendf(nil, `{"type":"track","userId":%q,"messageId":%q,"properties":{"n":%d,"blob":%q}}`,
				big.user, big.id, big.n, base64.StdEncoding.EncodeToString(blob))
			appendKafkaEvents(t, sp, evs)
			g := startGroup(t, sp, reg, "k="+kafkaURL(c, "events", tc.opts))

			testkit.Eventually(t, func() bool { return sp.Backlog("k").Events == 0 }, "status %v", status{g})
			dls := deadLetters(t, sp, "k")
			if got := deadIDs(dls); !slices.Equal(got, []string{big.id}) {
				t.Fatalf("dead letters %v, want only %s", got, big.id)
			}
			dl := dls[0]
			if dl.Reason != spool.ReasonRejected || !strings.Contains(dl.Error, "MESSAGE_TOO_LARGE") ||
				!bytes.Equal(dl.Event, big.data) || dl.WriteKey != "wk-1" || dl.Attempts < 1 {
				t.Errorf("dead letter %+v", dl)
			}
			rest := slices.Delete(slices.Clone(evs), 33, 34)
			recs := consume(t, c, "events", kafkaIDs(rest), 10*time.Second)
			for _, r := range recs {
				if headerValue(r, "messageId") == big.id {
					t.Errorf("the refused event reached Kafka")
				}
			}
			if n := metric(t, reg, "spillway_events_dead_lettered_total", "destination", "k", "reason", "rejected"); n != 1 {
				t.Errorf("dead-lettered counter %v, want 1", n)
			}
			if st := g.Status()[0]; st.State != StateUp || st.Delivered != int64(len(rest)) {
				t.Errorf("status %+v", st)
			}
		})
	}
}

func TestKafkaSASL(t *testing.T) {
	c := newKafkaCluster(t, kfake.EnableSASL(), kfake.Superuser("SCRAM-SHA-512", "spill", "s3cret-pass"),
		kfake.SeedTopics(2, "events"))
	evs := kafkaEvents("m", 30, 3)
	t.Run("the password from the environment authenticates", func(t *testing.T) {
		t.Setenv("TEST_KAFKA_PASS", "s3cret-pass")
		sp := openSpool(t, t.TempDir(), "k")
		appendKafkaEvents(t, sp, evs)
		startGroup(t, sp, nil, "k="+kafkaURL(c, "events", "sasl=scram-sha-512&user=spill&password_env=TEST_KAFKA_PASS"))
		testkit.Eventually(t, func() bool { return sp.Backlog("k").Events == 0 }, "not delivered")
	})
	t.Run("a wrong password is a misconfiguration, never logged", func(t *testing.T) {
		t.Setenv(DefaultKafkaPasswordEnv, "wrong-pass")
		// Kafka answers a failed authentication with
		// SASL_AUTHENTICATION_FAILED; kfake closes the connection
		// instead, so answer as Kafka does.
		c.ControlKey(int16(kmsg.SASLAuthenticate), func(req kmsg.Request) (kmsg.Response, error, bool) {
			c.KeepControl()
			resp := req.ResponseKind().(*kmsg.SASLAuthenticateResponse)
			resp.ErrorCode = kerr.SaslAuthenticationFailed.Code
			msg := "Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512"
			resp.ErrorMessage = &msg
			return resp, nil, true
		})
		var logs testkit.Buffer
		sp := openSpool(t, t.TempDir(), "k")
		appendKafkaEvents(t, sp, evs)
		dests, err := ParseDestinations([]string{"k=" + kafkaURL(c, "events", "sasl=scram-sha-512&user=spill")}, Defaults{})
		if err != nil {
			t.Fatal(err)
		}
		g, err := newGroup(dests, nil, sp, logs.Logger(t), nil)
		if err != nil {
			t.Fatal(err)
		}
		g.Start()
		defer shutdown(t, g, time.Second)
		// The state changes first, and the line saying so follows it.
		testkit.Eventually(t, func() bool {
			return g.Status()[0].State == StateMisconfigured && strings.Contains(logs.String(), "misconfigured")
		}, "status %v, or no log line saying so", status{g})
		if out := logs.String(); strings.Contains(out, "wrong-pass") || strings.Contains(g.Status()[0].LastError, "wrong-pass") {
			t.Errorf("the password leaked: %s", out)
		}
	})
	t.Run("no password at all is a usage error, naming the variable", func(t *testing.T) {
		t.Setenv(DefaultKafkaPasswordEnv, "")
		spec := "k=" + kafkaURL(c, "events", "sasl=plain&user=spill")
		if _, err := ParseDestination(spec, Defaults{}); err == nil || !strings.Contains(err.Error(), DefaultKafkaPasswordEnv) {
			t.Errorf("ParseDestination = %v, want an error naming %s", err, DefaultKafkaPasswordEnv)
		}
		// A destination whose variable was emptied after it was parsed
		// is refused when its forwarder is built.
		t.Setenv(DefaultKafkaPasswordEnv, "pass")
		d, err := ParseDestination(spec, Defaults{})
		if err != nil {
			t.Fatal(err)
		}
		t.Setenv(DefaultKafkaPasswordEnv, "")
		if _, err := newForwarder(d); err == nil || !strings.Contains(err.Error(), DefaultKafkaPasswordEnv) {
			t.Errorf("newForwarder = %v, want an error naming %s", err, DefaultKafkaPasswordEnv)
		}
	})
}

func TestParseKafkaDestination(t *testing.T) {
	t.Setenv(DefaultKafkaPasswordEnv, "from-the-default-variable")
	t.Setenv("MY_PASS", "from-my-variable")
	t.Setenv("EMPTY_PASS", "")
	for _, tc := range []struct {
		spec    string
		want    func(d Destination) bool
		wantErr string
	}{
		{spec: "k=kafka://h1:9092,h2:9093/events", want: func(d Destination) bool {
			o := d.Kafka
			return d.Kind == KindKafka && slices.Equal(o.Brokers, []string{"h1:9092", "h2:9093"}) && o.Topic == "events" &&
				o.Key == "userId" && o.Compression == "zstd" && o.Acks == "all" && d.Concurrency == 1 &&
				d.URL == "kafka://h1:9092,h2:9093/events"
		}},
		{spec: "k=kafka://broker/events.v1?key=messageId&compression=lz4&acks=leader&linger=20ms&batch_bytes=1MiB&tls=true&concurrency=4",
			want: func(d Destination) bool {
				o := d.Kafka
				return slices.Equal(o.Brokers, []string{"broker:9092"}) && o.Topic == "events.v1" && o.Key == "messageId" &&
					o.Compression == "lz4" && o.Acks == "leader" && o.Linger == 20*time.Millisecond && o.TLS &&
					d.BatchBytes == 1<<20 && d.Concurrency == 4
			}},
		{spec: "k=kafka://b:9092/t?sasl=scram-sha-256&user=u", want: func(d Destination) bool {
			return d.Kafka.PasswordEnv == DefaultKafkaPasswordEnv && d.Kafka.Password == ""
		}},
		{spec: "k=kafka://b:9092/t?sasl=plain&user=u&password_env=MY_PASS", want: func(d Destination) bool {
			return d.Kafka.PasswordEnv == "MY_PASS"
		}},
		{spec: "k=kafka://b:9092/t?sasl=plain&user=u&password=hunter2", want: func(d Destination) bool {
			return d.Kafka.Password == "hunter2"
		}},
		{spec: "k=kafka://b:9092/", wantErr: "kafka topic"},
		{spec: "k=kafka://b:9092/a/b", wantErr: "kafka topic"},
		{spec: "k=kafka:///events", wantErr: "no broker"},
		{spec: "k=kafka://u:p@b:9092/events", wantErr: "not in the URL"},
		{spec: "k=kafka://b:9092/t?compression=brotli", wantErr: "compression"},
		{spec: "k=kafka://b:9092/t?acks=1", wantErr: "acks"},
		{spec: "k=kafka://b:9092/t?key=email", wantErr: "key"},
		{spec: "k=kafka://b:9092/t?sasl=plain", wantErr: "needs user"},
		{spec: "k=kafka://b:9092/t?sasl=plain&user=u&password_env=EMPTY_PASS", wantErr: "needs a password: set EMPTY_PASS"},
		{spec: "k=kafka://b:9092/t?user=u", wantErr: "need sasl"},
		{spec: "k=kafka://b:9092/t?format=ndjson", wantErr: "only an http(s) destination"},
		{spec: "k=kafka://b:9092/t?partition=3", wantErr: "unknown parameter"},
		{spec: "k=https://h/hook?key=userId", want: func(d Destination) bool {
			return d.Kind == KindWebhook && d.URL == "https://h/hook?key=userId" // the endpoint's, not ours
		}},
	} {
		t.Run(tc.spec, func(t *testing.T) {
			d, err := ParseDestination(tc.spec, Defaults{})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tc.want(d) {
				t.Errorf("parsed %+v", d)
			}
		})
	}
}

func TestKafkaPasswordNeverPrinted(t *testing.T) {
	d, err := ParseDestination("k=kafka://b:9092/t?sasl=plain&user=u&password=hunter2", Defaults{})
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	slog.New(slog.NewJSONHandler(&logs, nil)).Info("dest", "d", d, "opts", d.Kafka)
	for _, s := range []string{d.String(), fmt.Sprintf("%v %+v %#v %s", d, d, d, d.Kafka.Password), logs.String()} {
		if strings.Contains(s, "hunter2") {
			t.Errorf("password printed: %s", s)
		}
	}
	if _, err := ParseDestination("k=kafka://b:9092/t?sasl=plain&user=u&password=hunter2&acks=some", Defaults{}); err == nil ||
		strings.Contains(err.Error(), "hunter2") {
		t.Errorf("parse error %v", err)
	}
}

// TestKafkaForwarderConformance checks what TestForwarderConformance
// checks of the other kinds: Kind, cancellation, Close twice.
func TestKafkaForwarderConformance(t *testing.T) {
	synctest.Test(t, testKafkaForwarderConformance)
}

// testKafkaForwarderConformance runs on synctest's clock, on an in-memory
// network, where the timeouts it waits out take no time.
func testKafkaForwarderConformance(t *testing.T) {
	c, dial := newVirtualKafka(t, 1, kfake.SeedTopics(1, "events"))
	// Uncompressed: franz-go's zstd coders close bubbled channels in
	// finalizers, which run outside the bubble.
	d := parse(t, "k="+kafkaURL(c, "events", "timeout=1s&compression=none"))
	d.Kafka.Dial = dial
	f, err := newForwarder(d)
	if err != nil {
		t.Fatal(err)
	}
	if f.Kind() != KindKafka {
		t.Errorf("Kind() = %q", f.Kind())
	}
	batch := []spool.Record{{Seq: 1, WriteKey: "k", Data: []byte(`{"type":"track","userId":"u","messageId":"a"}`)}}
	if err := f.Send(t.Context(), batch); err != nil {
		t.Fatalf("Send: %v", err)
	}

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := f.Send(ctx, batch); !errors.Is(err, context.Canceled) || IsRetryable(err) {
		t.Errorf("Send with a cancelled context = %v, want context.Canceled, not retryable", err)
	}

	// A broker that never answers a produce.
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		return nil, nil, true
	})
	ctx, cancel = context.WithTimeout(t.Context(), 100*time.Millisecond)
	err = f.Send(ctx, batch)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) || IsRetryable(err) {
		t.Errorf("Send to a hanging broker, cancelled: %v, want the context's deadline, not retryable", err)
	}
	// Its own timeout, with the caller's context alive: a Send without one
	// would hang the test.
	start := time.Now()
	err = f.Send(t.Context(), batch)
	if took := time.Since(start); !IsRetryable(err) || took > 3*time.Second {
		t.Errorf("Send to a hanging broker: %v after %v, want retryable once the timeout (1s) passed, at the latest at the hard timeout (3s)", err, took)
	}
	// Records failing together share one error, so the dispatcher retries
	// them as one part, not one by one.
	var be *BatchError
	if errors.As(err, &be) {
		for _, e := range be.Errs {
			if e != be.Errs[0] {
				t.Errorf("records timed out together got different errors: %v and %v", be.Errs[0], e)
				break
			}
		}
	}

	start = time.Now()
	if err := f.Close(t.Context()); err == nil || time.Since(start) > time.Second {
		t.Errorf("Close with records the broker never took: %v after %v, want a flush error at the timeout (1s)", err, time.Since(start))
	}
	if err := f.Close(t.Context()); err == nil {
		t.Errorf("second Close returned nil, want the first's error")
	}
	if err := f.Send(t.Context(), batch); !IsRetryable(err) {
		t.Errorf("Send after Close = %v, want retryable", err)
	}
}

func TestKafkaEveryCompressionAndAcksSettingDelivers(t *testing.T) {
	t.Parallel()
	c := newKafkaCluster(t, kfake.NumBrokers(2), kfake.SeedTopics(3, "events"))
	wantCodec := map[string]int8{"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
	for _, params := range []string{"compression=none", "compression=gzip", "compression=snappy", "compression=lz4",
		"compression=zstd&acks=leader", "compression=zstd&linger=0s", "compression=lz4&concurrency=3&linger=1m"} {
		t.Run(params, func(t *testing.T) {
			d, err := ParseDestination("k="+kafkaURL(c, "events", params), Defaults{})
			if err != nil {
				t.Fatal(err)
			}
			f, err := newKafka(d)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close(t.Context())
			evs := kafkaEvents(strings.ReplaceAll(params, "&", "-"), 40, 4)
			// franz-go sends a record batch uncompressed when compressing
			// does not make it smaller, as can happen to a batch of one
			// short record: padded, every batch shrinks whatever the codec.
			pad := `,"context":{"pad":"` + strings.Repeat("spillway ", 100) + `"}}`
			batch := make([]spool.Record, len(evs))
			for i := range evs {
				evs[i].data = append(bytes.TrimSuffix(evs[i].data, []byte("}")), pad...)
				batch[i] = spool.Record{Seq: uint64(i), WriteKey: "wk-1", Data: evs[i].data}
			}
			// A Send that waited out a linger of a minute would fail at its
			// timeout (10s): the first, before the client has loaded the
			// topic, and the second, after.
			for range 2 {
				if err := f.Send(t.Context(), batch); err != nil {
					t.Fatal(err)
				}
			}
			var mine []*kgo.Record
			for _, r := range consume(t, c, "events", kafkaIDs(evs), 10*time.Second) {
				if strings.HasPrefix(headerValue(r, "messageId"), evs[0].id[:len(evs[0].id)-6]) {
					mine = append(mine, r)
				}
			}
			checkPlacement(t, mine, evs, 3)
			codec, _, _ := strings.Cut(strings.TrimPrefix(params, "compression="), "&")
			for _, r := range mine {
				if got := int8(r.Attrs.CompressionType()); got != wantCodec[codec] {
					t.Fatalf("compression %d, want %s", got, codec)
				}
			}
		})
	}
}
