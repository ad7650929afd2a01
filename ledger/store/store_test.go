package store

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"rainforest/ledger"
)

func openTemp(t *testing.T) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "rfm.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

func record(name string, pid int) Record {
	return Record{
		Allocation: ledger.Allocation{Name: name, Cores: []int{2, 3}, Node: 1, Memory: 64 << 20, PageSize: 2 << 20, Pages: 32, Devices: []string{"0000:01:00.0"}},
		PID:        pid,
		StartTime:  123456,
		Spec:       json.RawMessage(`{"name":"` + name + `","cpus":2}`),
		Created:    time.Date(2026, 11, 26, 18, 0, 0, 0, time.UTC),
	}
}

func TestRecordsRoundTrip(t *testing.T) {
	s, _ := openTemp(t)
	if rs, err := s.Records(); err != nil || len(rs) != 0 {
		t.Fatalf("empty store: %v, %v", rs, err)
	}
	web, db := record("web", 100), record("db", 200)
	for _, r := range []Record{web, db} {
		if err := s.Put(r); err != nil {
			t.Fatal(err)
		}
	}
	rs, err := s.Records()
	if err != nil {
		t.Fatal(err)
	}
	if want := []Record{db, web}; !reflect.DeepEqual(rs, want) {
		t.Errorf("Records = %+v\nwant %+v", rs, want)
	}
	got, err := s.Get("web")
	if err != nil || !reflect.DeepEqual(got, web) {
		t.Errorf("Get = %+v, %v", got, err)
	}
	web.PID = 101
	if err := s.Put(web); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Get("web"); got.PID != 101 {
		t.Errorf("Put did not replace: %+v", got)
	}
	if err := s.Delete("web"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get("web"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get after Delete = %v", err)
	}
	if err := s.Delete("web"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second Delete = %v", err)
	}
	if err := s.Put(Record{}); err == nil {
		t.Error("Put of a nameless record succeeded")
	}
	bad := record("bad", 1)
	bad.Spec = json.RawMessage(`{not json`)
	if err := s.Put(bad); err == nil {
		t.Error("Put with an invalid Spec succeeded")
	}
}

func TestReopenPersists(t *testing.T) {
	s, path := openTemp(t)
	if err := s.Put(record("web", 100)); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := s.Append(Event{Who: "test", What: "create", Name: fmt.Sprint("s", i)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s2, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if got, err := s2.Get("web"); err != nil || !reflect.DeepEqual(got, record("web", 100)) {
		t.Errorf("after reopen: %+v, %v", got, err)
	}
	if last, err := s2.LastSeq(); err != nil || last != 3 {
		t.Errorf("LastSeq = %d, %v", last, err)
	}
	seq, err := s2.Append(Event{Who: "test", What: "destroy", Name: "s0"})
	if err != nil || seq != 4 {
		t.Errorf("Append after reopen = %d, %v; want 4", seq, err)
	}
	es, err := s2.Events(0, 0)
	if err != nil || len(es) != 4 {
		t.Fatalf("Events = %+v, %v", es, err)
	}
	for i, e := range es {
		if e.Seq != uint64(i+1) || e.Time.IsZero() {
			t.Errorf("event %d = %+v", i, e)
		}
	}
}

func TestOpenLocked(t *testing.T) {
	_, path := openTemp(t)
	start := time.Now()
	if _, err := Open(path); !errors.Is(err, ErrLocked) {
		t.Errorf("second Open = %v, want ErrLocked", err)
	}
	if d := time.Since(start); d > 5*LockTimeout {
		t.Errorf("second Open took %v", d)
	}
}

func TestUpdateAtomic(t *testing.T) {
	s, _ := openTemp(t)
	if err := s.Put(record("old", 1)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Append(Event{Who: "t", What: "first"}); err != nil {
		t.Fatal(err)
	}
	errBoom := errors.New("boom")
	err := s.Update(func(tx *Tx) error {
		if err := tx.Put(record("new", 2)); err != nil {
			return err
		}
		if err := tx.Delete("old"); err != nil {
			return err
		}
		if seq, err := tx.Append(Event{Who: "t", What: "lost"}); err != nil || seq != 2 {
			return fmt.Errorf("append in tx: %d, %v", seq, err)
		}
		// Reads inside the transaction see its writes.
		if _, err := tx.Get("new"); err != nil {
			return err
		}
		if _, err := tx.Get("old"); !errors.Is(err, ErrNotFound) {
			return fmt.Errorf("deleted record visible: %v", err)
		}
		return errBoom
	})
	if !errors.Is(err, errBoom) {
		t.Fatalf("Update = %v, want the fn's error", err)
	}
	rs, _ := s.Records()
	if len(rs) != 1 || rs[0].Allocation.Name != "old" {
		t.Errorf("after rollback records = %+v", rs)
	}
	es, _ := s.Events(0, 0)
	if len(es) != 1 || es[0].What != "first" {
		t.Errorf("after rollback events = %+v", es)
	}
	// The rolled back sequence number is not skipped, nor reused wrongly.
	if seq, err := s.Append(Event{Who: "t", What: "second"}); err != nil || seq != 2 {
		t.Errorf("Append after rollback = %d, %v", seq, err)
	}

	// A panicking fn rolls back too.
	func() {
		defer func() { _ = recover() }()
		_ = s.Update(func(tx *Tx) error {
			if err := tx.Put(record("panic", 3)); err != nil {
				return err
			}
			panic("boom")
		})
	}()
	if _, err := s.Get("panic"); !errors.Is(err, ErrNotFound) {
		t.Errorf("panicking Update committed: %v", err)
	}

	// A successful Update commits everything.
	err = s.Update(func(tx *Tx) error {
		if err := tx.Delete("old"); err != nil {
			return err
		}
		if err := tx.Put(record("new", 2)); err != nil {
			return err
		}
		_, err := tx.Append(Event{Who: "t", What: "replace", Name: "new"})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	rs, _ = s.Records()
	es, _ = s.Events(2, 0)
	if len(rs) != 1 || rs[0].Allocation.Name != "new" || len(es) != 1 || es[0].Seq != 3 || es[0].What != "replace" {
		t.Errorf("after commit: records %+v events %+v", rs, es)
	}
}

func TestEventsPaging(t *testing.T) {
	s, _ := openTemp(t)
	when := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	const n = 25
	for i := range n {
		e := Event{Seq: 999, Time: when.Add(time.Duration(i) * time.Second), Who: "cli", What: "op", Name: fmt.Sprint("s", i), Duration: time.Duration(i) * time.Millisecond, Detail: "d"}
		seq, err := s.Append(e)
		if err != nil || seq != uint64(i+1) {
			t.Fatalf("Append %d = %d, %v", i, seq, err)
		}
	}
	var all []Event
	since := uint64(0)
	for pages := 0; ; pages++ {
		page, err := s.Events(since, 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			if pages != 3 {
				t.Errorf("%d pages, want 3", pages)
			}
			break
		}
		if len(page) > 10 {
			t.Fatalf("page of %d", len(page))
		}
		all = append(all, page...)
		since = page[len(page)-1].Seq
	}
	if len(all) != n {
		t.Fatalf("paged %d events, want %d", len(all), n)
	}
	for i, e := range all {
		want := Event{Seq: uint64(i + 1), Time: when.Add(time.Duration(i) * time.Second), Who: "cli", What: "op", Name: fmt.Sprint("s", i), Duration: time.Duration(i) * time.Millisecond, Detail: "d"}
		if !reflect.DeepEqual(e, want) {
			t.Errorf("event %d = %+v, want %+v", i, e, want)
		}
	}
	if es, _ := s.Events(20, 0); len(es) != 5 || es[0].Seq != 21 {
		t.Errorf("Events(20, 0) = %+v", es)
	}
	if es, _ := s.Events(25, 10); len(es) != 0 {
		t.Errorf("Events past the end = %+v", es)
	}
	if es, _ := s.Events(^uint64(0), 10); len(es) != 0 {
		t.Errorf("Events(max) = %+v", es)
	}
}

func TestFileLayout(t *testing.T) {
	s, path := openTemp(t)
	if err := s.Put(record("web", 1)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Append(Event{Who: "t", What: "x"}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) error {
		var r Record
		if err := json.Unmarshal(tx.Bucket([]byte("records")).Get([]byte("web")), &r); err != nil || r.PID != 1 {
			return fmt.Errorf("records/web: %+v, %v", r, err)
		}
		var e Event
		key := binary.BigEndian.AppendUint64(nil, 1)
		if err := json.Unmarshal(tx.Bucket([]byte("events")).Get(key), &e); err != nil || e.Seq != 1 || e.What != "x" {
			return fmt.Errorf("events/1: %+v, %v", e, err)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
}

func TestConcurrentAppends(t *testing.T) {
	s, _ := openTemp(t)
	const workers, each = 16, 25
	seqs := make([][]uint64, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				seq, err := s.Append(Event{Who: fmt.Sprint("w", w), What: "op", Detail: fmt.Sprint(i)})
				if err != nil {
					t.Error(err)
					return
				}
				seqs[w] = append(seqs[w], seq)
			}
		}()
	}
	wg.Wait()
	seen := map[uint64]bool{}
	for w, ss := range seqs {
		for i, seq := range ss {
			if seen[seq] {
				t.Fatalf("seq %d given twice", seq)
			}
			seen[seq] = true
			if i > 0 && seq <= ss[i-1] {
				t.Errorf("worker %d: seq %d after %d", w, seq, ss[i-1])
			}
		}
	}
	es, err := s.Events(0, 0)
	if err != nil || len(es) != workers*each {
		t.Fatalf("Events: %d, %v", len(es), err)
	}
	for i, e := range es {
		if e.Seq != uint64(i+1) || !seen[e.Seq] {
			t.Fatalf("event %d has seq %d", i, e.Seq)
		}
	}
}

// putRaw writes bytes as name's record, bypassing Put's encoding.
func putRaw(t *testing.T, path, name string, v []byte) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(func(tx *bolt.Tx) error { return tx.Bucket([]byte(RecordsBucket)).Put([]byte(name), v) }); err != nil {
		t.Fatal(err)
	}
}

// A record that does not decode is reported by Load beside the others
// (Records fails on it: the supervisor used to refuse to start), and
// Quarantine moves its bytes unchanged.
func TestLoadAndQuarantine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rfm.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Put(record("web", 1)); err != nil {
		t.Fatal(err)
	}
	s.Close()
	bad := []byte(`{"allocation":{"name":"db"`)
	putRaw(t, path, "db", bad)
	if s, err = Open(path); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Records(); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Records: %v, want ErrCorrupt", err)
	}
	rs, unreadable, err := s.Load()
	if err != nil || len(rs) != 1 || rs[0].Allocation.Name != "web" || len(unreadable) != 1 || unreadable[0].Name != "db" || !errors.Is(unreadable[0].Err, ErrCorrupt) {
		t.Fatalf("Load: %+v %+v %v", rs, unreadable, err)
	}
	if err := s.Quarantine("db", "undecodable"); err != nil {
		t.Fatal(err)
	}
	if err := s.Quarantine("db", "again"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second quarantine: %v", err)
	}
	if rs, err := s.Records(); err != nil || len(rs) != 1 {
		t.Fatalf("Records after quarantine: %+v %v", rs, err)
	}
	qs, err := s.Quarantined()
	if err != nil || len(qs) != 1 || qs[0].Name != "db" || qs[0].Reason != "undecodable" || string(qs[0].Raw) != string(bad) || qs[0].Time.IsZero() || qs[0].Seq != 1 {
		t.Fatalf("Quarantined: %+v %v", qs, err)
	}
}

// A record written before phases existed reads as running; phase and
// intent round-trip.
func TestRecordPhase(t *testing.T) {
	s, path := openTemp(t)
	s.Close()
	putRaw(t, path, "old", []byte(`{"allocation":{"name":"old"},"pid":7,"start_time":9}`))
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r, err := s.Get("old")
	if err != nil || !r.Running() || r.Phase != "" || r.Intent != nil {
		t.Fatalf("old record: %+v %v", r, err)
	}
	n := record("new", 2)
	n.Phase, n.Intent = PhaseCreating, json.RawMessage(`{"op":"create"}`)
	if err := s.Put(n); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get("new")
	if err != nil || got.Running() || got.Phase != PhaseCreating || string(got.Intent) != `{"op":"create"}` {
		t.Fatalf("new record: %+v %v", got, err)
	}
}
