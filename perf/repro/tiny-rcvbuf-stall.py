# Reproduces an open finding (perf/results/stall-tiny-rcvbuf-2026-12-02.md): a backend
# with a 4 KiB SO_RCVBUF that never reads the client's upload stalls its own answer
# through ringsock after 64 KiB, while systemd-socket-proxyd and a direct connection
# deliver it. Run from the project root after `cargo build --release`; pass any
# argument to use the epoll driver. Loopback only, ends by itself within ~30 s.
import socket,time,threading,os,sys
b=socket.socket(); b.bind(('127.0.0.1',0)); b.listen(10); bport=b.getsockname()[1]
import subprocess
env=dict(os.environ); 
if len(sys.argv)>1: env['MONOIO_FORCE_LEGACY_DRIVER']='1'
p=subprocess.Popen(['./target/release/ringsock','proxy','--listen','127.0.0.1:18101',f'127.0.0.1:{bport}'],env=env,stderr=subprocess.DEVNULL)
time.sleep(0.5)
c=socket.create_connection(('127.0.0.1',18101))
u,_=b.accept()
u.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
c.setblocking(False); n=0
for i in range(5000):
    try: c.send(b't'*1000); n+=1; time.sleep(0.0002)
    except BlockingIOError: break
c.setblocking(True)
print('trickled',n)
got=[0]
def rd():
    c.settimeout(10)
    try:
        while True:
            d=c.recv(65536)
            if not d: print('EOF'); break
            got[0]+=len(d)
    except Exception as e: print('reader',e)
t=threading.Thread(target=rd); t.start()
u.settimeout(10)
try:
    u.sendall(os.urandom(4<<20)); print('backend wrote all')
except Exception as e: print('backend write', e, 'client got', got[0])
u.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b'\x01\x00\x00\x00\x00\x00\x00\x00'); u.close()
t.join(); print('client got', got[0])
p.terminate()
