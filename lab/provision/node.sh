#!/usr/bin/env bash
# Turn a booted box into a lab cluster node. Idempotent: a second run changes nothing and
# restarts nothing. Run as root inside the node by the lab driver (lab/cluster.py):
#
#   node.sh base    NAME   hosts, corosync, dlm_controld; node-a also exports NFS
#   node.sh storage NAME   mount the share; node-a creates the thesis images
#   node.sh plugin  NAME   build and install dlm.so + virtdlmd, configure libvirtd
#   node.sh lock-manager NAME dlm|nop
#                          switch libvirtd's lock manager (the suite's control run); the
#                          plugin phase puts back the lab setting
#   node.sh fencing NAME True|False
#                          write dlm.conf with or without fencing (the partition control
#                          run); prints a restart-needed line when the DLM must be restarted
#                          by a power cycle (lab.cluster.Lab.set_fencing does it)
#
# Reads /opt/virtdlm/.lab/vagrant-settings.json (the host's resolved settings) and
# /opt/virtdlm-secrets/authkey (corosync's key, made once on the host, same on every node).
set -euo pipefail

phase=$1
name=$2
src=/opt/virtdlm
settings=$src/.lab/vagrant-settings.json
changed=()

s() { python3 -c "import json,sys; print(json.load(open('$settings'))[sys.argv[1]])" "$1"; }
log() { printf '[%s %s] %s\n' "$name" "$phase" "$*"; }

# put PATH MODE: write stdin to PATH if different; remember that PATH changed.
put() {
  local path=$1 mode=$2 tmp
  tmp=$(mktemp)
  cat > "$tmp"
  if [ -f "$path" ] && cmp -s "$tmp" "$path"; then
    rm -f "$tmp"
    return 0
  fi
  install -D -m "$mode" "$tmp" "$path"
  rm -f "$tmp"
  changed+=("$path")
}
was_changed() { local p; for p in "${changed[@]}"; do [[ $p == "$1"* ]] && return 0; done; return 1; }

# The nodes, one "ID NAME IP" line each (lab/settings.py node_list).
nodes=$(python3 -c "import json; [print(n['id'], n['name'], n['ip']) for n in json.load(open('$settings'))['node_list']]")
node_count=$(wc -l <<< "$nodes")
my_ip=$(awk -v n="$name" '$2 == n {print $3}' <<< "$nodes")
[ -n "$my_ip" ] || { echo "node.sh: $name is not in the lab's node_list: $nodes" >&2; exit 2; }

# The cluster NIC: the en* interface that holds no management (DHCP) address. vagrant-libvirt
# would configure it with ifupdown, which the box does not have: networkd does it here,
# matched by MAC, in a file that sorts before the DHCP catch-all.
cluster_network() {
  local ip=$1 prefix=$2 dev mac
  for dev in /sys/class/net/en*; do
    dev=${dev##*/}
    if ! ip -4 -o addr show dev "$dev" | grep -q 'dynamic'; then
      mac=$(cat "/sys/class/net/$dev/address")
      put /etc/systemd/network/05-cluster.network 0644 <<EOF
# virtdlm lab: the isolated cluster network, static.
[Match]
MACAddress=$mac

[Network]
Address=$ip/$prefix
LinkLocalAddressing=no
EOF
      if was_changed /etc/systemd/network/; then
        networkctl reload
        networkctl reconfigure "$dev"
      fi
      return 0
    fi
  done
  echo "node.sh: $name: no en* interface without a DHCP address for the cluster network" \
       "($ip/$prefix); interfaces: $(ip -br addr | tr '\n' ';'). Is the cluster network" \
       "attached to the domain (virsh domiflist)?" >&2
  return 1
}

# /etc/dlm/dlm.conf. With fencing (the default): dlm_controld powers a failed node off with
# fence_virt through fence_virtd on the host (lab/host/fencing.py). action=off, not the
# agent's default reboot: a quick, certain fence (the lab powers the node back on). In a
# two-node cluster fencing node-a waits, so node-a, the NFS server, wins the fence race;
# with three or more quorum decides who fences, and nobody waits. Startup fencing is off in
# the lab only: make lab boots the nodes together, and a node the lab has just powered back
# on must not fence the survivors. Without fencing the lab is unsafe.
dlm_conf() {
  local fencing=$1 connects id node_name ip delay
  connects=$(while read -r id node_name ip; do
    delay=""
    [ "$node_count" = 2 ] && [ "$id" = 1 ] && delay=" delay=$(s fence_race_delay_s)"
    echo "connect virt node=$id plug=$(s prefix)$node_name$delay"
  done <<< "$nodes")
  if [ "$fencing" = True ]; then
    install -D -m 0400 /opt/virtdlm-secrets/fence_xvm.key "$(s fence_key_file)"
    put /etc/dlm/dlm.conf 0644 <<EOF
# virtdlm lab: fencing through the host's libvirt (fence_virt -> fence_virtd).
enable_fencing=1
enable_startup_fencing=0
enable_quorum_fencing=1
protocol=tcp
device virt /usr/sbin/fence_virt ipaddr=$(s fence_address) ipport=$(s fence_port) key_file=$(s fence_key_file) action=off timeout=$(s fence_timeout_s)
$connects
EOF
  else
    put /etc/dlm/dlm.conf 0644 <<EOF
# virtdlm lab with fencing: false. UNSAFE under a network partition: a node that is not
# fenced may still write while the other node's DLM grants its locks. Production fences.
enable_fencing=0
enable_startup_fencing=0
enable_quorum_fencing=0
protocol=tcp
EOF
  fi
  # dlm_controld reads dlm.conf when it starts, and cannot be restarted while lockspaces
  # exist: a running node with a new dlm.conf is power-cycled by the lab (it reads this).
  if was_changed /etc/dlm/dlm.conf && systemctl -q is-active dlm; then
    if [ -n "$(ls /sys/kernel/dlm 2>/dev/null)" ]; then
      echo "virtdlm-lab: restart-needed: /etc/dlm/dlm.conf changed while lockspaces exist"
    else
      systemctl restart dlm
    fi
  fi
}

phase_base() {
  local id node_name ip nodelist quorum
  cluster_network "$my_ip" "$(s cluster_subnet | cut -d/ -f2)"
  # Names resolve to cluster addresses, never 127.0.1.1 (corosync and migration need that).
  put /etc/hosts 0644 < <(
    grep -vE '^127\.0\.1\.1|# virtdlm-lab$' /etc/hosts
    awk '{print $3, $2, "# virtdlm-lab"}' <<< "$nodes"
  )
  nodelist=$(while read -r id node_name ip; do
    printf '    node {\n        name: %s\n        nodeid: %s\n        ring0_addr: %s\n    }\n' \
      "$node_name" "$id" "$ip"
  done <<< "$nodes")
  # Two nodes: votequorum's two_node mode (each is quorate alone; fencing decides a split).
  # Three or more: real quorum, a majority of votes; a cut-off minority stops.
  if [ "$node_count" = 2 ]; then
    quorum="    two_node: 1"
  else
    quorum="    # $node_count nodes: a partition needs $((node_count / 2 + 1)) votes to go on."
  fi

  put /etc/corosync/authkey 0400 < /opt/virtdlm-secrets/authkey
  put /etc/corosync/corosync.conf 0644 <<EOF
# virtdlm lab: a $node_count-node cluster on the isolated cluster network.
totem {
    version: 2
    cluster_name: virtdlm-lab
    transport: knet
    crypto_cipher: aes256
    crypto_hash: sha256
    # Nested TCG nodes on a small host stall for seconds at times (CI saw node-b answer
    # nothing for about 8 s right after a refused incoming migration, and node-a fenced
    # it): corosync's 3 s default token suits real hardware, not this lab. Clusters of
    # virtual machines are commonly run with a longer token for the same reason.
    token: 10000
}
nodelist {
$nodelist
}
quorum {
    provider: corosync_votequorum
$quorum
}
logging {
    to_syslog: yes
}
EOF
  dlm_conf "$(s fencing)"
  if was_changed /etc/corosync/; then
    systemctl enable -q corosync
    systemctl restart corosync
  else
    systemctl enable -q --now corosync
  fi
  systemctl enable -q --now dlm
  if [ "$name" = node-a ]; then
    local dir
    dir=$(s image_dir)
    mkdir -p "$dir"
    local cidr
    cidr=$(s cluster_subnet)
    put /etc/exports 0644 <<< "$dir $cidr(rw,sync,no_subtree_check,no_root_squash)"
    systemctl enable -q --now nfs-server
    was_changed /etc/exports && exportfs -ra
  fi
  log "ok (changed: ${changed[*]:-nothing})"
}

phase_storage() {
  local dir mnt opts
  dir=$(s image_dir)
  mnt=$(s mount_point)
  if [ "$(s nfs_locking)" = True ]; then
    opts="vers=4.2,hard,_netdev"
  else
    opts="vers=3,nolock,hard,_netdev"   # local locks only: they cannot cross nodes
  fi
  mkdir -p "$mnt"
  put /etc/fstab 0644 < <(grep -v " $mnt nfs" /etc/fstab; echo "node-a:$dir $mnt nfs $opts 0 0")
  if was_changed /etc/fstab && mountpoint -q "$mnt"; then
    umount "$mnt"
  fi
  mountpoint -q "$mnt" || mount "$mnt"
  # The shared block device: two partitions (written once, by node-a; the others re-read).
  local shared=/dev/disk/by-id/virtio-virtdlm-shared
  [ -b "$shared" ] || { log "$shared is missing: check the Vagrantfile's shared disk"; exit 1; }
  if [ "$name" = node-a ]; then
    python3 "$src/lab/provision/mbr.py" "$shared"
  fi
  # Just after a boot udev may not have made the partitions' links yet; a partition table
  # the kernel already uses cannot be re-read (busy), and need not be.
  [ -b "$shared-part2" ] || udevadm settle --timeout=30
  if [ ! -b "$shared-part2" ]; then
    blockdev --rereadpt "$shared" || log "re-reading $shared's partition table failed (in use?)"
    udevadm settle --timeout=30
  fi
  [ -b "$shared-part2" ] || { log "$shared-part1/2 did not appear after re-reading"; exit 1; }
  if [ "$name" = node-a ]; then
    for img in one.qcow2:qcow2:64M two.qcow2:qcow2:64M share.raw:raw:16M; do
      IFS=: read -r file fmt size <<< "$img"
      [ -e "$mnt/$file" ] || qemu-img create -q -f "$fmt" "$mnt/$file" "$size"
    done
  fi
  log "ok (changed: ${changed[*]:-nothing})"
}

# qemu_conf MANAGER: libvirtd's QEMU driver configuration with that lock manager.
qemu_conf() {
  put /etc/libvirt/qemu.conf 0600 <<EOF
# virtdlm lab node $name
lock_manager = "$1"
EOF
}

phase_fencing() {
  local fencing=${1:-}
  case "$fencing" in
    True|False) ;;
    *) log "fencing '$fencing': expected True or False"; exit 2 ;;
  esac
  dlm_conf "$fencing"
  log "ok: fencing $fencing (changed: ${changed[*]:-nothing})"
}

phase_lock_manager() {
  local manager=${1:-}
  case "$manager" in
    dlm|nop) ;;
    *) log "lock manager '$manager': expected dlm or nop"; exit 2 ;;
  esac
  qemu_conf "$manager"
  if was_changed /etc/libvirt/qemu.conf; then
    systemctl restart libvirtd
  fi
  log "ok: lock_manager = \"$manager\" (changed: ${changed[*]:-nothing})"
}

phase_plugin() {
  local libdir=/usr/lib/x86_64-linux-gnu/libvirt/lock-driver
  make -s -C "$src" plugin guest >/dev/null
  put "$(s writer_boot_image)" 0644 < "$src/build/writer-boot.img"
  install -m 0755 "$src/build/dlm.so" "$libdir/dlm.so.new"
  if cmp -s "$libdir/dlm.so.new" "$libdir/dlm.so"; then
    rm -f "$libdir/dlm.so.new"
  else
    mv "$libdir/dlm.so.new" "$libdir/dlm.so"
    changed+=("$libdir/dlm.so")
  fi
  for tool in virtdlmd:virtdlm.daemon virtdlm:virtdlm.cli; do
    IFS=: read -r bin module <<< "$tool"
    put "/usr/local/bin/$bin" 0755 < <(
      printf '#!/bin/sh\nPYTHONPATH=%s/plugin exec python3 -m %s "$@"\n' "$src" "$module")
  done
  put /etc/systemd/system/virtdlmd.service 0644 < "$src/plugin/systemd/virtdlmd.service"
  put /etc/systemd/system/virtdlmd.socket 0644 < "$src/plugin/systemd/virtdlmd.socket"
  put /etc/libvirt/qemu-dlm.conf 0644 <<EOF
# virtdlm lab node $name
backend = "dlm"
lockspace_name = "libvirt"
node_name = "$name"
EOF
  qemu_conf "$(s lock_manager)"
  # Live migration over TCP on the isolated cluster network, without auth: lab only.
  put /etc/libvirt/libvirtd.conf 0644 <<EOF
auth_tcp = "none"
EOF
  systemctl daemon-reload
  if was_changed /etc/systemd/system/virtdlmd || was_changed /etc/libvirt/qemu-dlm.conf; then
    systemctl enable -q virtdlmd.socket virtdlmd.service
    systemctl restart virtdlmd.socket virtdlmd.service
  else
    systemctl enable -q --now virtdlmd.socket virtdlmd.service
  fi
  systemctl enable -q --now libvirtd-tcp.socket
  if was_changed /etc/libvirt/ || was_changed "$libdir/dlm.so"; then
    systemctl restart libvirtd
  else
    systemctl enable -q --now libvirtd
  fi
  log "ok (changed: ${changed[*]:-nothing})"
}

case "$phase" in
  base) phase_base ;;
  storage) phase_storage ;;
  plugin) phase_plugin ;;
  lock-manager) phase_lock_manager "${3:-}" ;;
  fencing) phase_fencing "${3:-}" ;;
  *) echo "node.sh: unknown phase '$phase' (base, storage, plugin, lock-manager, fencing)" >&2; exit 2 ;;
esac
