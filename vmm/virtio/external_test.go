package virtio_test

import (
	"testing"

	"rainforest/vmm/eventfd"
	"rainforest/vmm/virtio"
	vt "rainforest/vmm/virtio/virtiotest"
)

// externalModel is an echoModel whose queues another process serves, and
// which implements only some transport features.
type externalModel struct{ echoModel }

func (m *externalModel) ServedTransportFeatures() uint64 { return virtio.FeatureVersion1 }

// eventRouter is a router whose vectors are eventfds.
type eventRouter struct {
	router
	evs []*eventfd.EventFD
}

func (r *eventRouter) EventFD(v int) *eventfd.EventFD {
	if v < 0 || v >= len(r.evs) {
		return nil
	}
	return r.evs[v]
}

func newEvents(t *testing.T, n int) []*eventfd.EventFD {
	var evs []*eventfd.EventFD
	for range n {
		ev, err := eventfd.New()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ev.Close() })
		evs = append(evs, ev)
	}
	return evs
}

func TestExternalQueuesDoorbells(t *testing.T) {
	for _, msix := range []bool{true, false} {
		m := newMachine(t)
		model := &externalModel{}
		r := &eventRouter{evs: newEvents(t, 3)}
		dev, err := virtio.NewPCIDevice(model, m.mem, r)
		if err != nil {
			t.Fatal(err)
		}
		kicks := newEvents(t, 2)
		if err := dev.UseKickEventFDs(kicks[:1]); err == nil {
			t.Fatal("one kick for two queues accepted")
		}
		if err := dev.UseKickEventFDs(kicks); err != nil {
			t.Fatal(err)
		}
		slot := m.add(dev)
		d := probe(t, m, slot)
		if msix {
			d.enableMSIX(dev.BARs()[0].Addr, 3)
		}
		// Only the served transport features are offered: EVENT_IDX
		// is refused.
		if d.negotiate(t, virtio.FeatureVersion1|virtio.FeatureEventIdx) {
			t.Fatal("an unserved transport feature was accepted")
		}
		if !d.negotiate(t, virtio.FeatureVersion1|1<<3) {
			t.Fatal("FEATURES_OK refused")
		}
		d.setupQueue(t, 0, 8, 1, vt.NewDriver(m.mem, 8, 0x10000))
		d.setupQueue(t, 1, 8, virtio.NoVector, vt.NewDriver(m.mem, 8, 0x20000))
		d.setStatus(virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusFeaturesOK | virtio.StatusDriverOK)
		if model.act == nil || model.act.Doorbells == nil {
			t.Fatalf("msix %v: activation without doorbells", msix)
		}
		bells := model.act.Doorbells
		if bells.Kick(0) != kicks[0] || bells.Kick(1) != kicks[1] || bells.Kick(2) != nil {
			t.Fatalf("msix %v: kicks are not the VMM's eventfds", msix)
		}
		switch {
		case msix && bells.Call(0) != r.evs[1]:
			t.Fatal("queue 0's call is not its vector's eventfd")
		case bells.Call(1) != nil:
			t.Fatal("a queue without a vector has a call eventfd")
		case !msix && bells.Call(0) != nil:
			t.Fatal("a call eventfd while MSI-X is off (INTx needs the ISR, a relay)")
		}
	}
}
