// Package partitioner discovers the machine's partitionable resources
// (cores with their SMT siblings, packages and NUMA nodes; memory and
// hugepage pools per node; PCI devices with their IOMMU groups and drivers)
// from sysfs and procfs, into an Inventory that the ledger divides.
package partitioner

// Inventory is what the machine has, as discovered.
type Inventory struct {
	CPUs    []CPU       `json:"cpus"`    // sorted by ID; offline CPUs included with Online=false
	Nodes   []Node      `json:"nodes"`   // sorted by ID; at least one (node 0) even without NUMA
	Devices []PCIDevice `json:"devices"` // sorted by Address
}

// CPU is one logical CPU (hardware thread).
type CPU struct {
	ID       int   `json:"id"`
	Online   bool  `json:"online"`
	Core     int   `json:"core"`     // core_id within the package
	Package  int   `json:"package"`  // physical_package_id
	Node     int   `json:"node"`     // NUMA node
	Siblings []int `json:"siblings"` // SMT siblings including itself, sorted
}

// Node is a NUMA node.
type Node struct {
	ID        int        `json:"id"`
	CPUs      []int      `json:"cpus"`
	MemTotal  uint64     `json:"mem_total"` // bytes
	MemFree   uint64     `json:"mem_free"`  // bytes
	HugePages []HugePool `json:"hugepages"` // one per supported size, sorted by size
}

// HugePool is a node's pool of one hugepage size.
type HugePool struct {
	PageSize uint64 `json:"page_size"` // bytes (2 MiB, 1 GiB)
	Total    uint64 `json:"total"`     // pages (nr_hugepages)
	Free     uint64 `json:"free"`      // pages (free_hugepages)
}

// PCIDevice is a PCI function.
type PCIDevice struct {
	Address    string `json:"address"` // domain:bus:slot.function, e.g. 0000:00:1f.2
	Vendor     uint16 `json:"vendor"`
	Device     uint16 `json:"device"`
	Class      uint32 `json:"class"`
	Driver     string `json:"driver"`      // bound driver, "" when none
	IOMMUGroup int    `json:"iommu_group"` // -1 when the device has no IOMMU group
	Node       int    `json:"node"`        // -1 when unknown
}
