package changelog

import (
	"bytes"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	cdcv1 "github.com/fluxkv/fluxkv/gen/flux/cdc/v1"
	"github.com/fluxkv/fluxkv/platform/store"
)

// encodeRecord is a record's payload as the log writes it.
func encodeRecord(t testing.TB, c store.Change, internal bool) []byte {
	t.Helper()
	var eb eventBuf
	ev := eb.fill("node-1", c, func(string) (int64, bool) { return 7, internal })
	b, err := proto.MarshalOptions{}.Marshal(ev)
	if err != nil {
		t.Fatalf("encode %+v: %v", c, err)
	}
	return b
}

// FuzzDecodeRecord holds the replay decoder to what its comment promises:
// on any payload a segment can hold (the CRCs only catch accidents) it
// never panics, accepts what proto.Unmarshal accepts, less an op or a
// revision no log holds, and nothing more (readers pass records on to
// consumers that decode them with proto.Unmarshal), and decodes the same
// values; and what it accepts, the log's encoder writes back to a record
// that decodes the same.
func FuzzDecodeRecord(f *testing.F) {
	at := time.Date(2026, 3, 4, 5, 6, 7, 8, time.UTC)
	for _, seed := range []struct {
		c        store.Change
		internal bool
	}{
		{c: store.Change{Op: store.OpPut, Revision: 1, Key: "k", Value: []byte("v"), CommitTime: at}},
		{c: store.Change{Op: store.OpPut, Revision: 1 << 40, Key: "é/ключ", Value: []byte{0, 1, 2}, CommitTime: at, ExpireTime: at.Add(time.Hour)}},
		{c: store.Change{Op: store.OpDelete, Revision: 9, Key: "gone", CommitTime: at}, internal: true},
		{c: store.Change{Op: store.OpExpire, Revision: 10, Key: "ttl"}},
	} {
		f.Add(encodeRecord(f, seed.c, seed.internal))
	}
	f.Add([]byte{})
	f.Add([]byte{0x10})                   // revision without its value
	f.Add([]byte{0x18, 0x07, 0x10, 0x01}) // an op no log holds
	f.Fuzz(func(t *testing.T, b []byte) {
		c, internal, err := decodeRecord(b)
		var ev cdcv1.ChangeEvent
		protoErr := proto.Unmarshal(b, &ev)
		if err != nil {
			if protoErr == nil && ev.GetRevision() >= 1 && ev.GetOp() >= cdcv1.Op_OP_PUT && ev.GetOp() <= cdcv1.Op_OP_EXPIRE {
				t.Fatalf("refused %x (%v), which proto.Unmarshal reads as %v", b, err, &ev)
			}
			return
		}
		if protoErr != nil {
			t.Fatalf("accepted %x as %+v; proto.Unmarshal refuses it: %v", b, c, protoErr)
		}
		if c.Revision != ev.GetRevision() || int(c.Op) != int(ev.GetOp()) || c.Key != ev.GetKey() ||
			!bytes.Equal(c.Value, ev.GetValue()) || internal != ev.GetInternal() {
			t.Fatalf("decoded %x as %+v (internal %v); proto.Unmarshal reads %v", b, c, internal, &ev)
		}
		// proto.Unmarshal merges a message field that occurs twice; the
		// decoder keeps the last occurrence, which no writer produces.
		if occurrences(b, fieldCommitTime) <= 1 && !c.CommitTime.Equal(timeOf(ev.GetCommitTime() != nil, ev.GetCommitTime().AsTime())) {
			t.Fatalf("decoded commit time %v from %x; proto.Unmarshal reads %v", c.CommitTime, b, ev.GetCommitTime())
		}
		if occurrences(b, fieldExpireTime) <= 1 && !c.ExpireTime.Equal(timeOf(ev.GetExpireTime() != nil, ev.GetExpireTime().AsTime())) {
			t.Fatalf("decoded expire time %v from %x; proto.Unmarshal reads %v", c.ExpireTime, b, ev.GetExpireTime())
		}

		again, againInternal, err := decodeRecord(encodeRecord(t, c, internal))
		wantExpire := c.ExpireTime
		if c.Op != store.OpPut {
			wantExpire = time.Time{} // the log records an expiry with puts only
		}
		if err != nil || again.Revision != c.Revision || again.Op != c.Op || again.Key != c.Key || !bytes.Equal(again.Value, c.Value) ||
			againInternal != internal || !again.CommitTime.Equal(c.CommitTime) || !again.ExpireTime.Equal(wantExpire) {
			t.Fatalf("%+v (internal %v) round-trips to %+v (internal %v), %v", c, internal, again, againInternal, err)
		}
	})
}

func timeOf(set bool, t time.Time) time.Time {
	if !set {
		return time.Time{}
	}
	return t
}

// occurrences counts the top-level length-delimited occurrences of field
// num in b, as far as b parses.
func occurrences(b []byte, num protowire.Number) int {
	count := 0
	for len(b) > 0 {
		n, typ, tagLen := protowire.ConsumeTag(b)
		if tagLen < 0 {
			return count
		}
		valueLen := protowire.ConsumeFieldValue(n, typ, b[tagLen:])
		if valueLen < 0 {
			return count
		}
		if n == num && typ == protowire.BytesType {
			count++
		}
		b = b[tagLen+valueLen:]
	}
	return count
}
