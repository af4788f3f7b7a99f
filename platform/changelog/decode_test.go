package changelog

import (
	"math/rand/v2"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	cdcv1 "github.com/fluxkv/fluxkv/gen/flux/cdc/v1"
)

// TestDecodeChangeMatchesProto holds the hand-written replay decoder to the
// generated one on random events, including fields it skips.
func TestDecodeChangeMatchesProto(t *testing.T) {
	t.Parallel()
	r := rand.New(rand.NewPCG(7, 11))
	for i := range 5000 {
		ev := &cdcv1.ChangeEvent{
			NodeId:   "node-" + string(rune('a'+r.IntN(26))),
			Revision: 1 + r.Int64N(1<<40),
			Op:       cdcv1.Op(1 + r.IntN(3)),
			Key:      randomString(r, r.IntN(40)),
		}
		if r.IntN(4) > 0 {
			ev.Value = []byte(randomString(r, r.IntN(100)))
		}
		if r.IntN(3) == 0 {
			ev.PreviousValue = []byte("prev")
		}
		if r.IntN(2) == 0 {
			ev.CommitTime = timestamppb.New(time.Unix(r.Int64N(1<<33), r.Int64N(1e9)))
		}
		if r.IntN(2) == 0 {
			ev.ExpireTime = timestamppb.New(time.Unix(r.Int64N(1<<33), r.Int64N(1e9)))
		}
		payload, err := proto.Marshal(ev)
		if err != nil {
			t.Fatal(err)
		}
		c, err := decodeChange(payload)
		if err != nil {
			t.Fatalf("#%d: decode %v: %v", i, ev, err)
		}
		var roundTrip cdcv1.ChangeEvent
		if err := proto.Unmarshal(payload, &roundTrip); err != nil {
			t.Fatal(err)
		}
		if c.Revision != roundTrip.GetRevision() || c.Key != roundTrip.GetKey() || string(c.Value) != string(roundTrip.GetValue()) ||
			int(c.Op) != int(roundTrip.GetOp()) ||
			(roundTrip.GetCommitTime() != nil && !c.CommitTime.Equal(roundTrip.GetCommitTime().AsTime())) ||
			(roundTrip.GetExpireTime() != nil && !c.ExpireTime.Equal(roundTrip.GetExpireTime().AsTime())) ||
			(roundTrip.GetExpireTime() == nil && !c.ExpireTime.IsZero()) {
			t.Fatalf("#%d: decoded %+v from %v", i, c, ev)
		}
	}
	for i, bad := range [][]byte{{0x10}, {0x22, 0x05, 'a'}, {0x18, 0x07, 0x10, 0x01}, {0x10, 0x01}} {
		if _, err := decodeChange(bad); err == nil {
			t.Errorf("#%d: decoded malformed or invalid record %x", i, bad)
		}
	}
}

func randomString(r *rand.Rand, n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte('a' + r.IntN(26))
	}
	return string(b)
}
