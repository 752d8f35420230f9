// drop_hash.c (../shared/perf/anchors) for IPv6: parses Ethernet and IPv6,
// looks the source's /64 up in a hash map, drops. The least an IPv6
// prefix filter must do (one lookup of a random bucket per source), so the
// anchor for flood (c) of `cargo xtask bench firewall`.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 1 << 20);
    __type(key, __u64);
    __type(value, __u32);
} nets SEC(".maps");
SEC("xdp") int drop_hash6(struct xdp_md *ctx) {
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IPV6)) return XDP_PASS;
    struct ipv6hdr *ip = (void *)(eth + 1);
    if ((void *)(ip + 1) > end) return XDP_PASS;
    __u64 k;
    __builtin_memcpy(&k, &ip->saddr, sizeof(k));
    __u32 *v = bpf_map_lookup_elem(&nets, &k);
    return v ? XDP_DROP : XDP_DROP; /* the lookup is what is measured */
}
char _license[] SEC("license") = "GPL";
