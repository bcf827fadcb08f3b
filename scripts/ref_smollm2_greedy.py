#!/usr/bin/env python3
"""Independent float64 NumPy forward pass of SmolLM2 (gguf-py dequantization):
the greedy tokens from <|im_start|> that crates/membound/tests/cpu_reference.rs pins.
Usage: python3 scripts/ref_smollm2_greedy.py [PATH.gguf]"""
import sys
import numpy as np, gguf
r=gguf.GGUFReader(sys.argv[1] if len(sys.argv) > 1 else __import__('os').path.expanduser('~/.cache/membound/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'))
T={t.name: gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64) for t in r.tensors}
def f(k):
    v=r.fields[k]; return v.parts[v.data[0]]
bos=int(f('tokenizer.ggml.bos_token_id')[0]); eps=float(f('llama.attention.layer_norm_rms_epsilon')[0]); theta=float(f('llama.rope.freq_base')[0])
print('bos',bos,'eps',eps,'theta',theta)
d=576; nh=9; nkv=3; hs=64; L=30
def rms(x,w): return w*(x/np.sqrt((x*x).mean()+eps))
K=[[] for _ in range(L)]; V=[[] for _ in range(L)]
def rope(v,pos):
    v=v.copy()
    for h in range(len(v)//hs):
        for i in range(hs//2):
            fr=theta**(-2*i/hs); a=pos*fr; c,s=np.cos(a),np.sin(a)
            x0,x1=v[h*hs+2*i],v[h*hs+2*i+1]; v[h*hs+2*i]=x0*c-x1*s; v[h*hs+2*i+1]=x0*s+x1*c
    return v
def fwd(tok,pos):
    x=T['token_embd.weight'][tok].copy()
    for l in range(L):
        p=f'blk.{l}.'
        xb=rms(x,T[p+'attn_norm.weight'])
        q=rope(T[p+'attn_q.weight']@xb,pos); k=rope(T[p+'attn_k.weight']@xb,pos); v=T[p+'attn_v.weight']@xb
        K[l].append(k); V[l].append(v); Ks=np.array(K[l]); Vs=np.array(V[l])
        out=np.zeros(d)
        for h in range(nh):
            kh=h//3; a=Ks[:,kh*hs:(kh+1)*hs]@q[h*hs:(h+1)*hs]/8.0; a=np.exp(a-a.max()); a/=a.sum()
            out[h*hs:(h+1)*hs]=a@Vs[:,kh*hs:(kh+1)*hs]
        x=x+T[p+'attn_output.weight']@out
        xb=rms(x,T[p+'ffn_norm.weight']); g=T[p+'ffn_gate.weight']@xb; u=T[p+'ffn_up.weight']@xb
        x=x+T[p+'ffn_down.weight']@(g/(1+np.exp(-g))*u)
    x=rms(x,T['output_norm.weight']); W=T.get('output.weight',T['token_embd.weight']); return W@x
# prompt: "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n" tokens via tokenizer tokens list
toks=[bytes(r.fields['tokenizer.ggml.tokens'].parts[i]).decode() for i in r.fields['tokenizer.ggml.tokens'].data]
print(toks[:3], toks[bos])
seq=[bos]; out=[]
tok=bos
for pos in range(12):
    lg=fwd(tok,pos); tok=int(lg.argmax()); out.append(tok)
print(out); print(''.join(toks[t] for t in out))
